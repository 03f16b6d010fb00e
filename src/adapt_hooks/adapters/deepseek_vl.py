"""DeepSeek-VL (``deepseek_vl``) and DeepSeek-VL hybrid (``deepseek_vl_hybrid``): one square grid per image.

SigLIP sees a 384 px image as 24x24 patches of 16 px, one token each, row-major: 576 image
tokens per image. The hybrid model adds SAM features of a 1024 px view to the same tokens, so
the grid is the low-resolution tower's.

- The image tokens of an image are its grid of image keys; several images are several grids.
- Every text layer is hooked (a Llama decoder: full attention everywhere).
"""

from __future__ import annotations

from .base import RepeatedGridAdapter


class DeepseekVLAdapter(RepeatedGridAdapter):
    model_types = ("deepseek_vl", "deepseek_vl_hybrid")
    example_checkpoint = "deepseek-community/deepseek-vl-1.3b-chat"

    @staticmethod
    def grid(config) -> tuple[int, int]:
        """``image_size / patch_size`` patches per side of the (low-resolution) SigLIP tower."""
        side = config.vision_config.image_size // config.vision_config.patch_size
        return side, side
