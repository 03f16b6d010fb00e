"""Aya Vision (``aya_vision``) and Command A Vision (``cohere2_vision``): SigLIP tiles pixel-shuffled
into square grids, Cohere2 text.

A tile of ``vision_config.image_size`` 364 px with patch 14 gives 26x26 patches, shuffled by
``downsample_factor`` 2 into 13x13 = 169 tokens, row-major. An image reaches the prompt as
``<|START_OF_IMG|>``, then ``TILE_i`` + 169 image tokens per tile, then ``TILE_GLOBAL`` + 169 tokens
of the whole image, then ``<|END_OF_IMG|>``.

- Every tile is its own grid of image keys, because the tile arrangement of the crop is not among
  the model's inputs and a tile count does not determine it.
- The global image (last, or alone for a single-tile image) is a grid like any other tile.
- The start, end, ``TILE_i`` and ``TILE_GLOBAL`` marker tokens are not image keys: they carry no pixels.
- Several images in a prompt simply add tiles to the row.
- Only full-attention decoder layers are hooked: a sliding-window layer's cache drops the image keys
  once the sequence outgrows the window, and its cache indices then no longer match the prompt's.
"""

from __future__ import annotations

from .base import RepeatedGridAdapter


class AyaVisionAdapter(RepeatedGridAdapter):
    unit = "tile"
    model_types = ("aya_vision",)
    example_checkpoint = "CohereForAI/aya-vision-8b"

    @staticmethod
    def grid(config) -> tuple[int, int]:
        """``(height, width)`` in tokens of one tile, from the vision tower and the pixel shuffle."""
        vision = config.vision_config
        side = vision.image_size // vision.patch_size // config.downsample_factor
        return side, side


class Cohere2VisionAdapter(AyaVisionAdapter):
    """Command A Vision: Aya Vision's tiles (512 px, patch 16, shuffled by 2 into 16x16 = 256
    tokens) and thumbnail, each a grid of its own."""

    model_types = ("cohere2_vision",)
    example_checkpoint = "CohereLabs/command-a-vision-07-2025"
