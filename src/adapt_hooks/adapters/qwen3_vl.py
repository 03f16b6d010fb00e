"""Qwen3-VL (``qwen3_vl``) and its MoE variant (``qwen3_vl_moe``): dynamic resolution, one grid per image.

The vision tower cuts an image into patches of ``patch_size`` = 16 px and the merger turns each
``spatial_merge_size`` x ``spatial_merge_size`` = 2x2 block into one token, so the language model
sees one token per 32 px, row-major: an ``image_grid_thw`` of ``(1, h, w)`` patches gives an
``h/2 x w/2`` grid. An image reaches the prompt as ``<|vision_start|>`` + its ``<|image_pad|>``
tokens + ``<|vision_end|>``, as in Qwen2-VL, so the grids are read the same way: from
``image_grid_thw`` when the forward call has it, else from the height and width channels of the
4-channel M-RoPE ``position_ids`` (text, t, h, w) that ``generate`` passes.

- The ``<|image_pad|>`` tokens of an image are its grid of image keys.
- ``<|vision_start|>`` and ``<|vision_end|>`` are not image keys: they carry their own ids and no pixels.
- Video frames (``<|video_pad|>`` tokens, each frame after its timestamp) are not image keys.
- Several images in a prompt are several grids, in order of appearance.
- Every text layer is hooked: DeepStack adds visual features to the hidden states of the first
  layers at the image positions during the prefill only, which changes no key's position.
"""

from __future__ import annotations

from .qwen2_vl import Qwen2VLAdapter


class Qwen3VLAdapter(Qwen2VLAdapter):
    model_types = ("qwen3_vl", "qwen3_vl_moe")
    example_checkpoint = "Qwen/Qwen3-VL-8B-Instruct"
