"""ERNIE 4.5 VL (``ernie4_5_vl_moe``): dynamic resolution, one grid per image, a MoE decoder.

The vision tower cuts an image into 14 px patches and merges each 2x2 block into one token,
row-major: an ``image_grid_thw`` of ``(1, h, w)`` patches gives an ``h/2 x w/2`` grid, read as for
Qwen2-VL (from ``image_grid_thw``, else from the M-RoPE ``position_ids``). Only the image pad
tokens between the image start and end markers are image keys; video tokens are not.
"""

from __future__ import annotations

from .qwen2_vl import Qwen2VLAdapter


class Ernie45VLAdapter(Qwen2VLAdapter):
    model_types = ("ernie4_5_vl_moe",)
    example_checkpoint = "baidu/ERNIE-4.5-VL-28B-A3B-PT"
