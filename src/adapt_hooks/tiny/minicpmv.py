"""Tiny MiniCPM-V 4.6 and 4.7: a 2-layer SigLIP-like tower (4 px patches, the window-attention
merger after layer 0) and Qwen3.5's hybrid decoder (two Gated DeltaNet and two full-attention
layers).

Prompts follow the processor (``use_image_id`` on): ``<image_id>0</image_id><image>`` + the global
image's tokens + ``</image>``, then each slice as ``<slice>`` + tokens + ``</slice>``, slice rows
joined by ``\\n``. Every unit is 8 x 16 patches, a 2x4 token grid (transformers 5.17's merger takes
every unit of a batch to be the size of the first); row 0's image has no slices, row 1's is
split 2 x 1. ``pixel_values`` packs every patch of the batch along its last axis, ``(1, 3, 4,
4 * n_patches)``, as NaViT packing does; 4.7 also gets the processor's ``mm_token_type_ids``.
"""

from __future__ import annotations

import torch
from torch import nn

from ._common import BOS, FIRST_TEXT_ID, IMAGE, PAD, TEXT, VIDEO, VISION_END, VISION_START, left_pad, text_tokens
from .qwen3_5 import LAYER_TYPES, LINEAR, ROPE

PATCH = 4
#: ``<slice>``, ``</slice>`` and the ``\n`` between slice rows; the image-id tags and digit are text ids.
SLICE_START, SLICE_END, NEWLINE = 7, 8, 9
IMAGE_ID_START, IMAGE_ID_END, DIGIT_0 = FIRST_TEXT_ID, FIRST_TEXT_ID + 1, FIRST_TEXT_ID + 2
#: Patches (h, w) of every unit, and the slice rows x cols of each batch row's image.
UNIT, SLICES = (8, 16), ((0, 0), (2, 1))


def config(model_type: str = "minicpmv4_6"):
    import transformers

    text = dict(TEXT, model_type="qwen3_5_text", head_dim=16, layer_types=LAYER_TYPES, rope_parameters=ROPE, **LINEAR)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=PATCH)
    common = dict(text_config=text, vision_config=vision, insert_layer_id=0, image_token_id=IMAGE, video_token_id=VIDEO, pad_token_id=PAD)
    if model_type == "minicpmv4_6":
        return transformers.MiniCPMV4_6Config(**common)
    return transformers.MiniCPMV4_7Config(
        **common, image_start_id=VISION_START, image_end_id=VISION_END, slice_start_id=SLICE_START,
        slice_end_id=SLICE_END, newline_id=NEWLINE,
    )


def image_tokens(rows: int, cols: int, per_unit: int) -> list[int]:
    """The processor's expansion of one image with ``rows x cols`` slices (``0 x 0``: global only)."""
    ids = [IMAGE_ID_START, DIGIT_0, IMAGE_ID_END, VISION_START] + [IMAGE] * per_unit + [VISION_END]
    for r in range(rows):
        ids += ([NEWLINE] if r else []) + ([SLICE_START] + [IMAGE] * per_unit + [SLICE_END]) * cols
    return ids


def inputs(model: nn.Module, batch: int, images: bool, generator: torch.Generator) -> dict[str, torch.Tensor]:
    per_unit = UNIT[0] * UNIT[1] // 16
    rows, n_units = [], 0
    for b in range(batch):
        image: list[int] = []
        if images:
            slice_rows, slice_cols = SLICES[b % len(SLICES)]
            image = image_tokens(slice_rows, slice_cols, per_unit)
            n_units += 1 + slice_rows * slice_cols
        rows.append([BOS] + image + text_tokens(b, generator))
    out = left_pad(rows)
    if model.config.model_type == "minicpmv4_7":
        out["mm_token_type_ids"] = (out["input_ids"] == IMAGE).long()
    if n_units:
        out["pixel_values"] = torch.randn(1, 3, PATCH, PATCH * UNIT[0] * UNIT[1] * n_units, generator=generator)
        out["target_sizes"] = torch.tensor([UNIT] * n_units)
    return out
