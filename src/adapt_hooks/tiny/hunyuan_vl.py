"""Tiny HunYuan-VL: patches of 4 px merged 2x2 by the merger's convolution, a 2-layer vision tower
and a HunYuan dense text decoder with 4-axis M-RoPE (position, width, height, image index).

Prompts follow the real processor: each image is the start token, ``h' * (w' + 1) + 2`` image
tokens (begin slot, ``h'`` rows of ``w'`` patches each closed by a newline slot, end slot) and the
end token. Row 0 has one image of (1, 8, 8) patches (a 4x4 token grid); row 1 has two, of
(1, 8, 12) and (1, 4, 8) patches (4x6 and 2x4), so a batch mixes grid sizes and image counts.
"""

from __future__ import annotations

import torch
from torch import nn

from ._common import BOS, IMAGE, PAD, TEXT, UNK, VISION_END, VISION_START, text_tokens
from .qwen2_vl import batch_inputs
from .qwen3_vl import IMAGE_GRIDS

PATCH, MERGE = 4, 2
#: Head dim 8 gives 4 rotary frequencies, one per M-RoPE axis.
ROPE = {"rope_type": "default", "mrope_section": [1, 1, 1, 1], "rope_theta": 10000.0}


def config():
    from transformers import HunYuanVLConfig

    vision = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, patch_size=PATCH,
        spatial_merge_size=MERGE, out_hidden_size=TEXT["hidden_size"], max_image_size=32,
    )
    text = dict(TEXT, head_dim=TEXT["hidden_size"] // TEXT["num_attention_heads"], rope_parameters=ROPE)
    return HunYuanVLConfig(
        vision_config=vision, text_config=text, image_token_id=IMAGE, im_start_id=VISION_START, im_end_id=VISION_END,
        im_newline_id=UNK, pad_token_id=PAD,
    )


def image_prompt(grid: tuple[int, int, int]) -> list[int]:
    """One image as the processor expands it: start token, begin/patch/newline/end slots, end token."""
    _, h, w = grid
    return [VISION_START] + [IMAGE] * ((h // MERGE) * (w // MERGE + 1) + 2) + [VISION_END]


def inputs(model: nn.Module, batch: int, images: bool, generator: torch.Generator) -> dict[str, torch.Tensor]:
    patch_dim = model.config.vision_config.num_channels * PATCH**2
    rows, pixels, grids = [], [], []
    for b in range(batch):
        image: list[int] = []
        if images:
            for grid in IMAGE_GRIDS[b % len(IMAGE_GRIDS)]:
                image += image_prompt(grid)
                pixels.append(torch.randn(grid[0] * grid[1] * grid[2], patch_dim, generator=generator))
                grids.append(grid)
        rows.append([BOS] + image + text_tokens(b, generator))
    return batch_inputs(rows, pixels, grids)
