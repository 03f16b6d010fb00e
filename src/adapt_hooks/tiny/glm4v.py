"""Tiny GLM-4.1V and GLM-4.5V (MoE): patches of 14 px merged 2x2, so one token per 28 px, GLM-4
text with half-dimension M-RoPE (``partial_rotary_factor`` 0.5) and grouped-query attention.

Prompts follow the real processor: each image is ``<|begin_of_image|>`` + ``t*h*w / 4``
``<|image|>`` tokens + ``<|end_of_image|>`` (ids 5, 3, 6 here, the vision start / image / vision
end of the tiny vocabulary), with the images of :mod:`.qwen3_vl`: row 0 one 4x4 grid, row 1 a
4x6 and a 2x4 grid. ``<|begin_of_video|>`` / ``<|end_of_video|>`` are ids 7 and 8.
"""

from __future__ import annotations

from ._common import IMAGE, PAD, TEXT, VIDEO, VISION_END, VISION_START
from .qwen3_vl import inputs

VIDEO_START, VIDEO_END = 7, 8
#: Head dim 16, of which 8 rotate: 4 frequencies split t/h/w.
ROPE = {"rope_type": "default", "mrope_section": [1, 1, 2], "partial_rotary_factor": 0.5, "rope_theta": 10000.0}
#: Two heads sharing one key/value head (head dim 16, so that half of it can rotate in 3 sections).
HEADS = dict(num_attention_heads=2, num_key_value_heads=1)
VISION = dict(
    depth=2, hidden_size=32, intermediate_size=64, num_heads=4, image_size=56, patch_size=14,
    spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=TEXT["hidden_size"],
)
#: Extra text-config keys of the MoE variant: layer 0 dense, then 4 routed experts (2 per token) + 1 shared.
MOE = dict(
    n_routed_experts=4, num_experts_per_tok=2, n_shared_experts=1, moe_intermediate_size=32,
    first_k_dense_replace=1, n_group=1, topk_group=1,
)

__all__ = ["VIDEO_END", "VIDEO_START", "config", "inputs"]


def config(model_type: str = "glm4v"):
    from transformers import Glm4vConfig, Glm4vMoeConfig

    text = dict(TEXT, **HEADS, rope_parameters=ROPE)
    config_cls = Glm4vConfig
    if model_type == "glm4v_moe":
        config_cls, text = Glm4vMoeConfig, dict(text, **MOE)
    if model_type == "glm46v":
        from transformers import Glm46VConfig as config_cls
    return config_cls(
        vision_config=VISION, text_config=text, image_token_id=IMAGE, video_token_id=VIDEO,
        image_start_token_id=VISION_START, image_end_token_id=VISION_END, video_start_token_id=VIDEO_START,
        video_end_token_id=VIDEO_END, pad_token_id=PAD,
    )


def glm46v_inputs(model, batch: int, images: bool, generator):
    """GLM-4.6V's prompts: GLM-4V's, with the ``mm_token_type_ids`` its processor returns (1 on
    image tokens), which its M-RoPE needs."""
    out = inputs(model, batch, images, generator)
    out["mm_token_type_ids"] = (out["input_ids"] == IMAGE).long()
    return out
