"""InternVL (``internvl``, the transformers-native checkpoints): one square grid per tile.

Each image is cropped into tiles of ``vision_config.image_size``; a tile of 448 px with patch 14 and
``downsample_ratio`` 0.5 gives 32x32 patches, pixel-shuffled into 16x16 = 256 tokens, row-major.
An image reaches the prompt as ``<img>`` + 256 image tokens per tile + ``</img>``.

- Every tile is its own grid of image keys, because the tile arrangement (rows x columns of the
  crop) is not among the model's inputs and a tile count does not determine it.
- The thumbnail (the whole image, last tile of a multi-tile image) is a grid like any other tile.
- ``<img>`` and ``</img>`` are not image keys: they carry their own token ids and no pixels.
- The vision tower's CLS token never reaches the prompt (it is dropped before the pixel shuffle).
- Several images (and video frames, which use the same token) simply add tiles to the row.
"""

from __future__ import annotations

from .base import RepeatedGridAdapter


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


class InternVLAdapter(RepeatedGridAdapter):
    unit = "tile"
    model_types = ("internvl",)
    example_checkpoint = "OpenGVLab/InternVL3-1B-hf"

    @staticmethod
    def grid(config) -> tuple[int, int]:
        """``(height, width)`` in tokens of one tile, from the vision tower and the pixel shuffle."""
        vision = config.vision_config
        (image_h, image_w), (patch_h, patch_w) = _pair(vision.image_size), _pair(vision.patch_size)
        ratio = config.downsample_ratio
        return int(image_h // patch_h * ratio), int(image_w // patch_w * ratio)
