"""Tiny DeepSeek-VL and DeepSeek-VL hybrid: SigLIP at 32 px, patch 4 -> 8x8 = 64 image tokens, Llama
text; the hybrid model's SAM tower sees a 64 px view of the same image."""

from __future__ import annotations

import torch

from ._common import BOS, IMAGE, PAD, TEXT, left_pad, text_tokens

IMAGE_SIZE, PATCH, HIGH_RES = 32, 4, 64
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=IMAGE_SIZE,
              patch_size=PATCH, model_type="siglip_vision_model")  # fmt: skip
SAM = dict(model_type="sam_vision_model", hidden_size=32, output_channels=16, num_hidden_layers=2, num_attention_heads=4,
           image_size=HIGH_RES, patch_size=4, mlp_dim=64, global_attn_indexes=[1], window_size=4)  # fmt: skip


def config(model_type: str = "deepseek_vl"):
    from transformers import DeepseekVLConfig, DeepseekVLHybridConfig

    text = dict(TEXT, model_type="llama")
    if model_type == "deepseek_vl_hybrid":
        return DeepseekVLHybridConfig(vision_config=VISION, high_res_vision_config=SAM, text_config=text, image_token_id=IMAGE,
                                      pad_token_id=PAD)  # fmt: skip
    return DeepseekVLConfig(vision_config=VISION, text_config=text, image_token_id=IMAGE, pad_token_id=PAD)


def inputs(model, batch: int, images: bool, generator: torch.Generator) -> dict[str, torch.Tensor]:
    n_image = (IMAGE_SIZE // PATCH) ** 2 if images else 0
    out = left_pad([[BOS] + [IMAGE] * n_image + text_tokens(b, generator) for b in range(batch)])
    if images:
        out["pixel_values"] = torch.randn(batch, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
        if model.config.model_type == "deepseek_vl_hybrid":
            out["high_res_pixel_values"] = torch.randn(batch, 3, HIGH_RES, HIGH_RES, generator=generator)
    return out
