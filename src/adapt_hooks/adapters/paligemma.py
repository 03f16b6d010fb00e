"""PaliGemma and PaliGemma 2 (``paligemma``): one square grid per image, image tokens first.

SigLIP-So400m/14 sees a 224 px image as 16x16 = 256 patches (32x32 = 1024 at 448 px, 64x64 = 4096
at 896 px), each projected straight to one ``<image>`` token, row-major. The processor builds
``<image>`` x 256 per image, then ``<bos>``, the prompt and ``\\n``; the whole prompt is a
bidirectional prefix (prefix-LM mask), generated tokens attend causally.

- The ``<image>`` tokens of an image are its grid of image keys; the grid side is
  ``vision_config.image_size // vision_config.patch_size``.
- ``<bos>``, the prompt and the ``\\n`` are text, not image keys.
- Several images in a prompt (the processor accepts a list per prompt) simply add grids to the row.
- PaliGemma 2 (Gemma 2 text, sliding window 4096 on every other layer, 8192 positions) is hooked on
  its full-attention layers only; PaliGemma (Gemma text) on every layer.

The text attention passes its scaling (Gemma 2: ``query_pre_attn_scalar ** -0.5``) and Gemma 2's
attention-logit softcapping to the attention function, which is where the guard reads them.
"""

from __future__ import annotations

from .base import RepeatedGridAdapter


class PaliGemmaAdapter(RepeatedGridAdapter):
    unit = "image"
    model_types = ("paligemma",)
    example_checkpoint = "google/paligemma2-3b-mix-224"


    @staticmethod
    def grid(config) -> tuple[int, int]:
        """``(height, width)`` in tokens of one image: one token per patch."""
        vision = config.vision_config
        side = vision.image_size // vision.patch_size
        return side, side
