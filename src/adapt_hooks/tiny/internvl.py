"""Tiny InternVL: tiles of 48 px, patch 4 -> 12x12 patches -> pixel shuffle 0.5 -> 6x6 = 36 tokens
per tile, Qwen2 text. Row 0's image is a single tile; row 1's is cropped into 2 tiles plus the
thumbnail, as the processor does for a wide image, so a batch mixes tilings."""

from __future__ import annotations

import torch

from ._common import IMAGE, PAD, TEXT, VISION_END, VISION_START, tiled_inputs

IMAGE_SIZE, PATCH = 48, 4
#: Tiles per row's image: one tile alone (no thumbnail), or 2 crops + the thumbnail.
TILES = (1, 3)


def config():
    from transformers import InternVLConfig, InternVLVisionConfig, Qwen2Config

    vision = InternVLVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        image_size=IMAGE_SIZE, patch_size=PATCH,
    )
    side = IMAGE_SIZE // PATCH // 2
    return InternVLConfig(
        vision_config=vision, text_config=Qwen2Config(**TEXT), image_token_id=IMAGE, image_seq_length=side * side,
        downsample_ratio=0.5, vision_feature_select_strategy="default", vision_feature_layer=-1, pad_token_id=PAD,
    )


def inputs(model, batch: int, images: bool, generator: torch.Generator) -> dict[str, torch.Tensor]:
    per_tile = model.config.image_seq_length
    return tiled_inputs(
        batch, images, generator, TILES, lambda tiles: [VISION_START] + [IMAGE] * (per_tile * tiles) + [VISION_END], IMAGE_SIZE
    )
