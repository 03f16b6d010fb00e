"""Tiny Qwen3-VL and Qwen3-VL-MoE: patches of 16 px merged 2x2, so one token per 32 px, and a
2-layer vision tower whose DeepStack features enter text layers 0 and 1.

Prompts follow the real processor: each image is ``<|vision_start|>`` + ``t*h*w / 4``
``<|image_pad|>`` tokens + ``<|vision_end|>``. Row 0 has one image of (1, 8, 8) patches (a 4x4
token grid); row 1 has two, of (1, 8, 12) and (1, 4, 8) patches (4x6 and 2x4), so a batch mixes
grid sizes and image counts.
"""

from __future__ import annotations

import torch
from torch import nn

from ._common import BOS, IMAGE, PAD, TEXT, VIDEO, VISION_END, VISION_START, text_tokens
from .qwen2_vl import batch_inputs

#: ``image_grid_thw`` (in patches) of each image of row b (cycled for larger batches).
IMAGE_GRIDS = (((1, 8, 8),), ((1, 8, 12), (1, 4, 8)))
#: Head dim 8 gives 4 rotary frequencies, split t/h/w and interleaved as in the real models.
ROPE = {"rope_type": "default", "mrope_section": [2, 1, 1], "mrope_interleaved": True, "rope_theta": 10000.0}
VISION = dict(
    depth=2, hidden_size=32, intermediate_size=64, num_heads=4, patch_size=16, spatial_merge_size=2,
    temporal_patch_size=2, out_hidden_size=TEXT["hidden_size"], num_position_embeddings=64,
    deepstack_visual_indexes=[0, 1],
)
#: Extra text-config keys of the MoE variant: 4 experts, 2 per token, in every layer.
MOE = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, decoder_sparse_step=1)


def config(model_type: str = "qwen3_vl"):
    from transformers import Qwen3VLConfig, Qwen3VLMoeConfig

    text = dict(TEXT, head_dim=TEXT["hidden_size"] // TEXT["num_attention_heads"], rope_parameters=ROPE)
    config_cls = Qwen3VLConfig
    if model_type == "qwen3_vl_moe":
        config_cls, text = Qwen3VLMoeConfig, dict(text, **MOE)
    return config_cls(
        vision_config=VISION, text_config=text, image_token_id=IMAGE, video_token_id=VIDEO,
        vision_start_token_id=VISION_START, vision_end_token_id=VISION_END, pad_token_id=PAD,
    )


def image_prompt(grid: tuple[int, int, int], merge: int) -> list[int]:
    """One image as the processor expands it: start marker, ``t*h*w / merge**2`` image tokens, end marker."""
    t, h, w = grid
    return [VISION_START] + [IMAGE] * (t * h * w // merge**2) + [VISION_END]


def inputs(model: nn.Module, batch: int, images: bool, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Prompts, flattened patches and ``image_grid_thw`` for the Qwen-style processors (Qwen3-VL, GLM-4V)."""
    vision = model.config.vision_config
    patch_dim = vision.in_channels * vision.temporal_patch_size * vision.patch_size**2
    return prompts(batch, images, generator, patch_dim, vision.spatial_merge_size)


def prompts(batch: int, images: bool, generator: torch.Generator, patch_dim: int, merge: int) -> dict[str, torch.Tensor]:
    """:func:`inputs` for flattened patches of ``patch_dim`` values merged ``merge`` x ``merge``."""
    rows, pixels, grids = [], [], []
    for b in range(batch):
        image: list[int] = []
        if images:
            for grid in IMAGE_GRIDS[b % len(IMAGE_GRIDS)]:
                image += image_prompt(grid, merge)
                pixels.append(torch.randn(grid[0] * grid[1] * grid[2], patch_dim, generator=generator))
                grids.append(grid)
        rows.append([BOS] + image + text_tokens(b, generator))
    return batch_inputs(rows, pixels, grids)
