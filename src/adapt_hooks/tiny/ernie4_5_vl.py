"""Tiny ERNIE 4.5 VL: 14 px patches merged 2x2, a 4-layer MoE decoder with
4 experts (2 per token) and a shared one, and Qwen-style prompts with the images of
:mod:`.qwen3_vl`'s rows and the ``mm_token_type_ids`` its M-RoPE needs."""

from __future__ import annotations

import torch

from ._common import IMAGE, PAD, TEXT, VIDEO, VISION_END, VISION_START
from . import qwen3_vl

VIDEO_START, VIDEO_END = 7, 8


def config():
    from transformers import Ernie4_5_VLMoeConfig

    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=4, patch_size=14, spatial_merge_size=2, temporal_merge_size=2)
    text = dict(TEXT, moe_intermediate_size=[32, 32], moe_k=2, moe_num_experts=4, moe_num_shared_experts=1,
                rope_parameters={"rope_type": "default", "mrope_section": [1, 1, 2], "rope_theta": 10000.0})  # fmt: skip
    return Ernie4_5_VLMoeConfig(vision_config=vision, text_config=text, image_token_id=IMAGE, video_token_id=VIDEO,
                                image_start_token_id=VISION_START, image_end_token_id=VISION_END, video_start_token_id=VIDEO_START,
                                video_end_token_id=VIDEO_END, pad_token_id=PAD)  # fmt: skip


def inputs(model, batch: int, images: bool, generator: torch.Generator) -> dict[str, torch.Tensor]:
    vision = model.config.vision_config  # patches of one frame, RGB
    return qwen3_vl.prompts(batch, images, generator, 3 * vision.patch_size**2, vision.spatial_merge_size)
