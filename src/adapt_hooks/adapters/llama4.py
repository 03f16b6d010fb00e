"""Llama 4 (``llama4``): images as square tiles plus a global view, one square grid per tile.

The processor resizes an image to a ``rows x cols`` arrangement of ``image_size`` tiles (336 px in
the released checkpoints) and, when there is more than one tile, adds the whole image resized to one
tile (the global view, last). Each tile goes through the vision tower on its own: patches of
``patch_size`` (14 px: 24x24 patches), pixel-shuffled by ``pixel_shuffle_ratio`` (0.5) into a
12x12 = 144-token grid, row-major. The prompt holds, per image, ``<|image_start|>``, then for each
tile row its tiles' ``<|patch|>`` tokens joined by ``<|tile_x_separator|>`` and ended by
``<|tile_y_separator|>``, then ``<|image|>`` and the global view's ``<|patch|>`` tokens, then
``<|image_end|>``; an unsplit image is ``<|image_start|><|image|>`` + its tokens + ``<|image_end|>``.

- The ``<|patch|>`` tokens (``config.image_token_id``) are the image keys; each run of a tile's
  tokens is one grid, the global view a grid of its own, the last of its image.
- ``<|image_start|>``, ``<|image_end|>``, ``<|image|>`` and both tile separators are not image
  keys: they carry their own token ids and no pixels.
- Tiles stay separate grids, in the processor's order, rather than being stitched into one picture:
  each is encoded on its own, with its own patch position embeddings.
- Several images in a prompt simply add their tiles to the row.
- Layers: the RoPE layers use chunked attention (``attention_chunk_size``, 8192 tokens in the
  released checkpoints: a query sees only the keys of its own chunk), so they do not keep every image
  key in view of every generated token; only the NoPE layers (``no_rope_layers`` 0, every fourth),
  which are ``full_attention`` in ``text_config.layer_types``, are hooked. Their attention
  temperature tuning scales the queries before the attention function, so the guard sees it.
- The text layers are at ``model.language_model.model.layers`` (``get_decoder()`` gives the
  causal LM, not its decoder).

transformers 5.24's forward fails on every call that returns a dict (an upstream bug);
:func:`adapt_hooks.compat.repair_llama4` works around it.
"""

from __future__ import annotations

from torch import nn

from .base import RepeatedGridAdapter


class Llama4Adapter(RepeatedGridAdapter):
    unit = "tile"
    model_types = ("llama4",)
    example_checkpoint = "meta-llama/Llama-4-Scout-17B-16E"

    def decoder_layers(self, model: nn.Module) -> nn.ModuleList:
        return model.language_model.model.layers

    @staticmethod
    def grid(config) -> tuple[int, int]:
        """``(height, width)`` in tokens of one tile after the pixel shuffle."""
        vision = config.vision_config
        side = vision.image_size // vision.patch_size
        tokens = side * vision.pixel_shuffle_ratio
        if tokens != int(tokens):
            raise ValueError(
                f"llama4: {side} patches per side are not divisible by the pixel shuffle ratio {vision.pixel_shuffle_ratio}."
            )
        return int(tokens), int(tokens)
