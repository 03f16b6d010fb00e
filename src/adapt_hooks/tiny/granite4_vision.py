"""Tiny Granite 4 Vision: CLIP tiles of 32 px with patch 4 (8x8 patches), Window Q-Former
projectors downsampling by ``"2/4"`` to 4x4 tokens per tile, a dense Granite text decoder whose
layer 0 receives the deepstack features and layers 0-3 the four spatial-offset groups.

The Q-Former's width follows the vision tower's at 64 per head, so the vision tower is 64 wide.
Row 0's image is 60x40 px: best resolution 64x64 (2x2 tiles), an 8x8 tile grid unpadded to 8x6;
row 1's is 24x80 px (1x3 tiles, 4x12). The prompt holds, per image, the base grid's tokens, then
each tile grid row followed by one newline slot, all with the image token id, as the processor
writes it.
"""

from __future__ import annotations

import torch

from ..adapters.granite4_vision import Granite4VisionAdapter
from ._common import BOS, IMAGE, PAD, TEXT, left_pad, text_tokens
from .llava_next import anyres_pixels

TILE, PATCH = 32, 4
PINPOINTS = [[32, 64], [64, 32], [64, 64], [96, 32], [32, 96]]
IMAGE_SIZES = ((60, 40), (24, 80))


def config():
    from transformers import Blip2QFormerConfig, CLIPVisionConfig, Granite4VisionConfig, Granite4VisionTextConfig

    vision = CLIPVisionConfig(
        hidden_size=64, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=TILE, patch_size=PATCH,
    )
    qformer = Blip2QFormerConfig(
        hidden_size=64, num_attention_heads=1, intermediate_size=64, num_hidden_layers=1, encoder_hidden_size=64,
        cross_attention_frequency=1, max_position_embeddings=64, use_qformer_text_input=False, vocab_size=8,
    )
    return Granite4VisionConfig(
        vision_config=vision, text_config=Granite4VisionTextConfig(**TEXT, attention_multiplier=0.25), qformer_config=qformer,
        image_token_index=IMAGE, image_grid_pinpoints=PINPOINTS, image_seq_length=16, vision_feature_select_strategy="default",
        vision_feature_layer=-1, downsample_rate="2/4", deepstack_layer_map=[[-1, 0]], spatial_vision_layer=-1,
        spatial_target_layers=[0, 1, 2, 3], projector_dropout=0.0, pad_token_id=PAD,
    )


def inputs(model, batch: int, images: bool, generator: torch.Generator) -> dict[str, torch.Tensor]:
    from transformers.image_processing_utils import select_best_resolution

    config, adapter = model.config, Granite4VisionAdapter()
    side = adapter.base_side(config)
    rows, sizes, patches = [], [], []
    for b in range(batch):
        image: list[int] = []
        if images:
            sizes.append(IMAGE_SIZES[b % 2])
            height, width = adapter.tile_grid(config, *sizes[-1])
            image = [IMAGE] * (side * side + height * (width + 1))
            best_h, best_w = select_best_resolution(sizes[-1], config.image_grid_pinpoints)
            patches.append((best_h // TILE) * (best_w // TILE) + 1)
        rows.append([BOS] + image + text_tokens(b, generator))
    out = left_pad(rows)
    if images:
        out.update(anyres_pixels(patches, sizes, TILE, generator))
    return out
