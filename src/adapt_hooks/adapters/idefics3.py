"""Idefics3 and SmolVLM: images split into tiles plus a global image, one square grid per tile.

The processor resizes an image, cuts it into ``rows x cols`` square tiles and adds the whole image
squared to the same size (the global image); each of them goes through the vision tower
separately, and a pixel shuffle merges ``scale_factor x scale_factor`` patches into one token, so
every tile gives ``side x side`` tokens in row-major order with
``side = image_size // patch_size // scale_factor`` (Idefics3-8B: 364 / 14 / 2 = 13, 169 tokens;
SmolVLM2-256M/500M: 512 / 16 / 4 = 8, 64 tokens). The prompt reads, per image,
``<fake_token_around_image><row_r_col_c>`` + tile tokens for each tile, ``\\n`` after each tile row,
then ``\\n<fake_token_around_image><global-img>`` + global tokens + ``<fake_token_around_image>``.

Decisions:
- Every ``<image>`` token is an image key, and each run of ``side * side`` of them is one tile's grid.
- ``<fake_token_around_image>``, ``<row_r_col_c>``, ``<global-img>`` and ``\\n`` are text tokens, so
  they are not image keys.
- The global image is a grid of its own, the last one of its image.
- Tiles stay separate grids rather than being composed into one big grid per image: the tile
  arrangement is not among the model's inputs (the processor drops ``rows``/``cols``, and the
  ``<row_r_col_c>`` ids belong to the tokenizer, not the config), and every tile is encoded on its own.
- Several images in a prompt, and SmolVLM video frames (one global-only grid per frame), simply
  contribute their grids in order of appearance.

Only the prefill's ``input_ids`` are needed, so the layout is the same whether the forward call
gets ``pixel_values`` (a hand-written call) or ``mm_encoder_outputs`` (``generate`` encodes the
images before the prefill).
"""

from __future__ import annotations

from .base import RepeatedGridAdapter


class Idefics3Adapter(RepeatedGridAdapter):
    unit = "tile"
    model_types = ("idefics3", "smolvlm")
    example_checkpoint = "HuggingFaceTB/SmolVLM2-256M-Video-Instruct"

    @staticmethod
    def tile_side(config) -> int:
        """Tokens per side of one tile's grid after the pixel shuffle."""
        vision = config.vision_config
        size, patch = vision.image_size, vision.patch_size
        if isinstance(size, (list, tuple)) or isinstance(patch, (list, tuple)):
            sizes = {int(s) for s in (size if isinstance(size, (list, tuple)) else [size])}
            patches = {int(p) for p in (patch if isinstance(patch, (list, tuple)) else [patch])}
            if len(sizes) != 1 or len(patches) != 1:
                raise ValueError(
                    f"{config.model_type}: only square tiles are supported (image_size {size}, patch_size {patch})."
                )
            size, patch = sizes.pop(), patches.pop()
        patches_per_side, scale = size // patch, config.scale_factor
        if patches_per_side % scale:
            raise ValueError(
                f"{config.model_type}: {patches_per_side} patches per side ({size} px / patch {patch}) "
                f"are not divisible by the pixel-shuffle scale_factor {scale}."
            )
        return patches_per_side // scale

    def grid(self, config) -> tuple[int, int]:
        side = self.tile_side(config)
        return side, side
