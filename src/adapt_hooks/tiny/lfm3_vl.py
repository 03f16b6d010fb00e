"""Tiny LFM3-VL: a 2-layer vision tower (a short convolution, then attention) over patches of 4 px
merged 2x2, and an LFM3 decoder of a short convolution (layer 0), full attention (1, 3) and a
sliding window of 16 tokens (2, narrower than every prompt, so not hooked).

Prompts and images are Qwen3-VL's (:func:`adapt_hooks.tiny.qwen3_vl.prompts`): row 0 has one
image of (1, 8, 8) patches, row 1 two, of (1, 8, 12) and (1, 4, 8), each ``<|vision_start|>`` +
``t*h*w / 4`` ``<|image_pad|>`` tokens + ``<|vision_end|>``.
"""

from __future__ import annotations

import torch
from torch import nn

from ._common import IMAGE, PAD, TEXT, VIDEO, VISION_END, VISION_START
from .qwen3_vl import prompts

LAYER_TYPES = ["conv", "full_attention", "sliding_attention", "full_attention"]
VISION = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    patch_size=4, spatial_merge_size=2, temporal_patch_size=2, layer_types=["conv", "full_attention"],
)


def config():
    from transformers import Lfm3VlConfig

    text = dict(TEXT, model_type="lfm3", head_dim=8, layer_types=LAYER_TYPES, sliding_window=16)
    return Lfm3VlConfig(
        vision_config=VISION, text_config=text, image_token_id=IMAGE, video_token_id=VIDEO,
        vision_start_token_id=VISION_START, vision_end_token_id=VISION_END, projector_hidden_size=32, pad_token_id=PAD,
    )


def inputs(model: nn.Module, batch: int, images: bool, generator: torch.Generator) -> dict[str, torch.Tensor]:
    vision = model.config.vision_config
    patch_dim = vision.in_channels * vision.temporal_patch_size * vision.patch_size**2
    out = prompts(batch, images, generator, patch_dim, vision.spatial_merge_size)
    del out["mm_token_type_ids"]  # the LFM3-VL processor returns none
    return out
