"""LFM3-VL (``lfm3_vl``): Qwen2-VL-style images in a hybrid LFM3 decoder.

Unlike LFM2-VL, LFM3-VL takes its images the Qwen2-VL way: the Qwen2-VL image processor cuts each
image at its own size into 16 px patches, ordered by ``spatial_merge_size`` x ``spatial_merge_size``
block, and the projector merges each block into one token, so an image of ``image_grid_thw``
``(1, h, w)`` patches is an ``h / merge x w / merge`` grid, row-major. The prompt holds
``<|vision_start|>`` + ``<|image_pad|>`` tokens + ``<|vision_end|>`` per image; the grids are read
from ``image_grid_thw`` (from transformers 5.23 on, the guard merges back what ``generate``'s image
encoding received). The text positions are plain 1-D, so there is no M-RoPE to fall back on.

- Only ``<|image_pad|>`` tokens are image keys; vision start/end markers are not.
- Video frames (``<|video_pad|>``, their own token id) are not image keys.
- The decoder is hybrid: short-convolution layers (no ``self_attn``) and sliding-window layers
  (a 256-token window, narrower than the context, whose cache drops the image keys) are not
  hooked; only the ``full_attention`` layers are.
"""

from __future__ import annotations

from .qwen2_vl import Qwen2VLAdapter


class Lfm3VlAdapter(Qwen2VLAdapter):
    model_types = ("lfm3_vl",)
    example_checkpoint = "LiquidAI/LFM3-VL-2B"
