"""Mllama (Llama 3.2 Vision): the text decoder reads the image only through cross-attention layers.

The prompt holds one ``<|image|>`` token per image, not a span of image tokens, so the image keys
are not in the self-attention cache at all: the hooked modules are the cross-attention modules of
the layers in ``text_config.cross_attention_layers``, whose keys are the projected vision tokens,
``images x max_num_tiles x (1 + (image_size / patch_size)^2)`` per row (1601 per tile at 560 px,
patch 14), ordered image, tile, CLS then patches row-major. Positions of an :class:`ImageLayout`
here index that cross-attention key axis and ``prefill_length`` is its length.

- Each valid tile is one grid of ``image_size / patch_size`` squared patch tokens (40x40 for the
  released checkpoints).
- The CLS token at the head of each tile is excluded: it lies on no grid.
- Padding tiles (beyond an image's tiling) and padding images (rows with fewer images) are excluded.
- Tiles that the decode steps cannot see are excluded: decode steps reuse the cross-attention mask
  row of the prompt's last token, so an image whose token is followed by another image's token
  with text in between (interleaved prompts) is not an image key of the generated text.
- Tiles of one image stay separate grids, in the processor's tile order, rather than being stitched
  into one picture: each tile is its own 560 px crop with its own patch position embeddings.
- Several images in a row are simply more tiles; each visible tile of each image is one grid.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from ..layout import Grid, ImageLayout
from .base import Adapter


def _pair(value: int | list[int] | tuple[int, int]) -> tuple[int, int]:
    """``image_size`` / ``patch_size`` as ``(height, width)``."""
    return (int(value[0]), int(value[1])) if isinstance(value, (list, tuple)) else (int(value), int(value))


class MllamaAdapter(Adapter):
    model_types = ("mllama",)
    example_checkpoint = "meta-llama/Llama-3.2-11B-Vision-Instruct"

    def attention_modules(self, model: nn.Module) -> list[nn.Module]:
        """One module per decoder layer: ``cross_attn`` of cross-attention layers, ``self_attn`` of the others."""
        cross = set(model.config.get_text_config().cross_attention_layers)
        layers = model.get_decoder().layers
        return [layer.cross_attn if i in cross else layer.self_attn for i, layer in enumerate(layers)]

    def hookable_layers(self, model: nn.Module, modules: list[nn.Module]) -> list[int]:
        """Only the cross-attention layers see the image."""
        return sorted(model.config.get_text_config().cross_attention_layers)

    def hide_images(self, inputs: dict[str, object], image_tokens: torch.Tensor, length: int) -> None:
        """The text reads the image only through ``cross_attention_mask``: zero it (a row whose
        tokens see no tile skips the cross-attention, as an image-free prompt does)."""
        mask = inputs.get("cross_attention_mask")
        if mask is not None:
            inputs["cross_attention_mask"] = torch.zeros_like(mask)

    @staticmethod
    def tile_grid(config) -> tuple[int, int]:
        """``(height, width)`` in patches of one tile, e.g. 40x40 for 560 px tiles of 14 px patches."""
        vision = config.vision_config
        (h, w), (ph, pw) = _pair(vision.image_size), _pair(vision.patch_size)
        return h // ph, w // pw

    def layout(self, config, input_ids: torch.Tensor, inputs: Mapping[str, object]) -> ImageLayout:
        """Cross-attention keys of the valid, visible tiles, one grid per tile.

        Reads the ``(images, tiles)`` shape from ``pixel_values`` (or from the masks when the call
        passes precomputed ``cross_attention_states``), the valid tiles from ``aspect_ratio_mask``
        and what the generated text sees from the last prompt row of ``cross_attention_mask``.
        """
        batch, length = input_ids.shape
        device = input_ids.device
        height, width = self.tile_grid(config)
        per_tile = height * width + 1  # CLS first
        pixels = inputs.get("pixel_values")
        states = inputs.get("cross_attention_states")
        cross_mask = inputs.get("cross_attention_mask")
        tile_mask = inputs.get("aspect_ratio_mask")
        if pixels is not None:
            n_images, n_tiles = pixels.shape[1], pixels.shape[2]
        elif states is not None:
            shaped = next((m for m in (cross_mask, tile_mask) if m is not None), None)
            n_tiles = shaped.shape[-1] if shaped is not None else config.vision_config.max_num_tiles
            keys = states.numel() // (batch * config.get_text_config().hidden_size)
            if keys % (n_tiles * per_tile):
                raise ValueError(
                    f"mllama: cross_attention_states hold {keys} keys per row, not a whole number of images of "
                    f"{n_tiles} tiles x {per_tile} tokens ({height}x{width} patches + CLS)."
                )
            n_images = keys // (n_tiles * per_tile)
        else:  # text only: the cross-attention layers are skipped
            return ImageLayout(
                torch.zeros(batch, 0, dtype=torch.long, device=device),
                torch.zeros(batch, 0, dtype=torch.bool, device=device),
                tuple(() for _ in range(batch)),
                0,
            )
        tiles = torch.ones(batch, n_images, n_tiles, dtype=torch.bool, device=device)
        if tile_mask is not None:
            tiles &= tile_mask.to(device).reshape(batch, n_images, n_tiles).bool()
        if cross_mask is not None:
            tiles &= cross_mask[:, :length][:, -1].to(device).bool()
        grid = torch.arange(height * width, device=device) + 1
        rows = [(torch.nonzero(t.flatten()).flatten()[:, None] * per_tile + grid).flatten() for t in tiles]
        n_max = max(len(r) for r in rows)
        positions = torch.zeros(batch, n_max, dtype=torch.long, device=device)
        valid = torch.zeros(batch, n_max, dtype=torch.bool, device=device)
        grids = []
        for b, keys in enumerate(rows):
            positions[b, : len(keys)], valid[b, : len(keys)] = keys, True
            count = len(keys) // (height * width)
            grids.append(tuple(Grid(i * height * width, height, width) for i in range(count)))
        return ImageLayout(positions, valid, tuple(grids), n_images * n_tiles * per_tile)
