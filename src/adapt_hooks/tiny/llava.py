"""Tiny LLaVA-1.5: CLIP vision (48 px, patch 6 -> 8x8 = 64 image tokens) + Llama text."""

from __future__ import annotations

import torch

from ._common import BOS, IMAGE, PAD, TEXT, left_pad, text_tokens

MODEL_TYPE = "llava"
IMAGE_SIZE, PATCH = 48, 6


def config():
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vision = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        image_size=IMAGE_SIZE, patch_size=PATCH,
    )
    side = IMAGE_SIZE // PATCH
    return LlavaConfig(
        vision_config=vision, text_config=LlamaConfig(**TEXT), image_token_index=IMAGE,
        image_seq_length=side * side, vision_feature_select_strategy="default", vision_feature_layer=-1,
        pad_token_id=PAD,
    )


def inputs(model, batch: int, images: bool, generator: torch.Generator) -> dict[str, torch.Tensor]:
    n_image = model.config.image_seq_length if images else 0
    rows = [[BOS] + [IMAGE] * n_image + text_tokens(b, generator) for b in range(batch)]
    out = left_pad(rows)
    if images:
        out["pixel_values"] = torch.randn(batch, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    return out
