"""Tiny LLaVA-NeXT (CLIP vision + Llama text) and LLaVA-OneVision (SigLIP vision + Qwen2 text).

Tiles are 16 px with patch 4, so the base image and every tile are 4x4 token grids. Row 0's image
is 30x20 px: best resolution 32x32 (2x2 tiles), an 8x8 tile grid unpadded to 8x6; row 1's image
is 12x40 px for LLaVA-NeXT (1x3 tiles, 4x12) and 40x24 px for OneVision (3x2 tiles, 12x8, pooled
to 9x6 by ``anyres_max_4``). The prompt holds, per image, the base grid's tokens, then each tile
grid row followed by one newline slot, all with the image token id, as the processors write it.
"""

from __future__ import annotations

import math

import torch

from ._common import BOS, IMAGE, PAD, TEXT, VIDEO, left_pad, text_tokens

TILE, PATCH = 16, 4
PINPOINTS = [[16, 32], [32, 16], [32, 32], [48, 16], [16, 48]]
ONEVISION_PINPOINTS = [[16, 16], [16, 32], [32, 16], [32, 32], [32, 48], [48, 32], [48, 48]]
#: (height, width) in px of row b's image, per family.
IMAGE_SIZES = {"llava_next": ((30, 20), (12, 40)), "llava_next_video": ((30, 20), (12, 40)), "llava_onevision": ((30, 20), (40, 24))}


def config(model_type: str = "llava_next"):
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaNextConfig,
        LlavaOnevisionConfig,
        Qwen2Config,
        SiglipVisionConfig,
    )

    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  image_size=TILE, patch_size=PATCH)
    if model_type == "llava_next_video":
        from transformers import LlavaNextVideoConfig

        return LlavaNextVideoConfig(
            vision_config=CLIPVisionConfig(**vision), text_config=LlamaConfig(**TEXT), image_token_index=IMAGE,
            video_token_index=VIDEO, image_grid_pinpoints=PINPOINTS, image_seq_length=(TILE // PATCH) ** 2,
            vision_feature_select_strategy="default", vision_feature_layer=-1, pad_token_id=PAD, spatial_pool_stride=2,
        )
    if model_type == "llava_next":
        return LlavaNextConfig(
            vision_config=CLIPVisionConfig(**vision), text_config=LlamaConfig(**TEXT), image_token_index=IMAGE,
            image_grid_pinpoints=PINPOINTS, image_seq_length=(TILE // PATCH) ** 2,
            vision_feature_select_strategy="default", vision_feature_layer=-1, pad_token_id=PAD,
        )
    return LlavaOnevisionConfig(
        vision_config=SiglipVisionConfig(**vision, vision_use_head=False), text_config=Qwen2Config(**TEXT),
        image_token_index=IMAGE, video_token_index=VIDEO, image_grid_pinpoints=ONEVISION_PINPOINTS,
        vision_aspect_ratio="anyres_max_4", vision_feature_select_strategy="full", vision_feature_layer=-1,
        pad_token_id=PAD,
    )


def image_tokens(config, height: int, width: int) -> tuple[int, int]:
    """``(image tokens, tiles + 1)`` of one ``height x width`` px image, counted as the processor does."""
    from transformers.image_processing_utils import select_best_resolution

    tile, side = config.vision_config.image_size, config.vision_config.image_size // config.vision_config.patch_size
    best_h, best_w = select_best_resolution((height, width), config.image_grid_pinpoints)
    rows, cols = best_h // tile * side, best_w // tile * side
    if width / height > cols / rows:
        rows -= 2 * ((rows - int(round(height * cols / width, 7))) // 2)
    else:
        cols -= 2 * ((cols - int(round(width * rows / height, 7))) // 2)
    aspect = getattr(config, "vision_aspect_ratio", None)
    if aspect is not None:
        ratio = math.sqrt(rows * cols / (int(aspect.removeprefix("anyres_max_")) * side**2))
        if ratio > 1.1:
            rows, cols = int(rows // ratio), int(cols // ratio)
    return side * side + rows * (cols + 1), (best_h // tile) * (best_w // tile) + 1


def inputs(model, batch: int, images: bool, generator: torch.Generator) -> dict[str, torch.Tensor]:
    config = model.config
    rows, sizes, patches = [], [], []
    for b in range(batch):
        image: list[int] = []
        if images:
            sizes.append(IMAGE_SIZES[config.model_type][b % 2])
            n_tokens, n_patches = image_tokens(config, *sizes[-1])
            image = [IMAGE] * n_tokens
            patches.append(n_patches)
        rows.append([BOS] + image + text_tokens(b, generator))
    out = left_pad(rows)
    if images:
        out.update(anyres_pixels(patches, sizes, TILE, generator))
        if config.model_type == "llava_onevision":
            out["batch_num_images"] = torch.ones(batch, dtype=torch.long)
    return out


def anyres_pixels(patches: list[int], sizes: list[tuple[int, int]], tile: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """``pixel_values`` and ``image_sizes`` of LLaVA-NeXT-style anyres images: each image's
    ``patches[b]`` tiles (base first), padded as the processor pads them, to the batch's largest count."""
    pixels = torch.zeros(len(patches), max(patches), 3, tile, tile)
    for b, n in enumerate(patches):
        pixels[b, :n] = torch.randn(n, 3, tile, tile, generator=generator)
    return {"pixel_values": pixels, "image_sizes": torch.tensor(sizes)}
