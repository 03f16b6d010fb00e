"""Tiny Qwen3.5 and Qwen3.5-MoE: Qwen3-VL's vision (16 px patches merged 2x2) and prompts, and a
hybrid decoder of two Gated DeltaNet linear-attention layers (0, 2) and two full-attention
layers (1, 3), the only ones a guard hooks."""

from __future__ import annotations

from ._common import IMAGE, PAD, TEXT, VIDEO, VISION_END, VISION_START
from .qwen3_vl import MOE, VISION

LAYER_TYPES = ["linear_attention", "full_attention", "linear_attention", "full_attention"]
#: Head dim 16 with a quarter of it rotary: 2 frequencies, split t/h (interleaved) as in the real models.
ROPE = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [1, 1, 0], "mrope_interleaved": True,
        "partial_rotary_factor": 0.25}  # fmt: skip
LINEAR = dict(linear_conv_kernel_dim=4, linear_key_head_dim=8, linear_value_head_dim=8, linear_num_key_heads=2,
              linear_num_value_heads=4)  # fmt: skip


def config(model_type: str = "qwen3_5"):
    from transformers import Qwen3_5Config, Qwen3_5MoeConfig

    text = dict(TEXT, head_dim=16, layer_types=LAYER_TYPES, rope_parameters=ROPE, **LINEAR)
    vision = {k: v for k, v in VISION.items() if k != "deepstack_visual_indexes"}
    config_cls = Qwen3_5Config
    if model_type == "qwen3_5_moe":
        moe = {k: v for k, v in MOE.items() if k != "decoder_sparse_step"}
        config_cls, text = Qwen3_5MoeConfig, dict(text, shared_expert_intermediate_size=32, **moe)
    return config_cls(
        vision_config=vision, text_config=text, image_token_id=IMAGE, video_token_id=VIDEO,
        vision_start_token_id=VISION_START, vision_end_token_id=VISION_END, pad_token_id=PAD,
    )
