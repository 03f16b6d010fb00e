"""Tiny Llama 4: tiles of 32 px, patch 4 -> 8x8 patches, pixel-shuffled (ratio 0.5) into 4x4 = 16
image tokens per tile; a MoE text decoder (layers 1 and 3 MoE) whose RoPE layers 0 and 2 use
chunked attention with 16-token chunks (shorter than every prompt) and whose NoPE layers 1 and 3
are full attention, with attention temperature tuning that already varies at these lengths.

Prompts follow the real processor: an image split into ``rows x cols`` tiles is
``<|image_start|>``, each tile row's tiles (``<|patch|>`` tokens) joined by ``<|tile_x_separator|>``
and ended by ``<|tile_y_separator|>``, then ``<|image|>`` and the global view's ``<|patch|>``
tokens, then ``<|image_end|>``; an unsplit image (1x1) has no global view. Row 0's image is split
2x2 (4 tiles + the global view), row 1's is a single tile, so a batch mixes tilings.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import compat
from ._common import IMAGE, PAD, TEXT, VISION_END, VISION_START, tiled_inputs

IMAGE_SIZE, PATCH = 32, 4
#: Token ids of ``<|tile_x_separator|>``, ``<|tile_y_separator|>`` and the ``<|image|>`` marker
#: (``IMAGE`` is ``<|patch|>``, the config's image token; 5/6 are ``<|image_start|>``/``<|image_end|>``).
TILE_X, TILE_Y, IMAGE_MARKER = 7, 8, 9
#: Tiles (rows, cols) of each batch row's image.
TILINGS = ((2, 2), (1, 1))


def config():
    from transformers import Llama4Config

    vision = dict(
        hidden_size=32, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, image_size=IMAGE_SIZE,
        patch_size=PATCH, pixel_shuffle_ratio=0.5, projector_input_dim=32, projector_output_dim=32,
        vision_output_dim=32, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )
    text = dict(
        TEXT, head_dim=8, intermediate_size_mlp=64, num_local_experts=4, num_experts_per_tok=1,
        interleave_moe_layer_step=2, no_rope_layer_interval=2, attention_chunk_size=16, floor_scale=8,
    )
    return Llama4Config(
        vision_config=vision, text_config=text, image_token_index=IMAGE, boi_token_index=VISION_START,
        eoi_token_index=VISION_END, pad_token_id=PAD,
    )


def prepare(model: nn.Module) -> None:
    """Work around transformers 5.24's Llama 4 forward bug (see :func:`adapt_hooks.compat.repair_llama4`)."""
    compat.repair_llama4(model)


def image_tokens(rows: int, cols: int, per_tile: int) -> list[int]:
    """The processor's expansion of one ``<|image|>`` split into ``rows x cols`` tiles."""
    ids = [VISION_START]
    if rows * cols > 1:
        for _ in range(rows):
            for c in range(cols):
                ids += [IMAGE] * per_tile + ([TILE_X] if c < cols - 1 else [])
            ids.append(TILE_Y)
    return ids + [IMAGE_MARKER] + [IMAGE] * per_tile + [VISION_END]


def inputs(model, batch: int, images: bool, generator: torch.Generator) -> dict[str, torch.Tensor]:
    per_tile = (IMAGE_SIZE // PATCH // 2) ** 2
    tiles = tuple(rows * cols + (rows * cols > 1) for rows, cols in TILINGS)
    layouts = {rows * cols + (rows * cols > 1): (rows, cols) for rows, cols in TILINGS}
    return tiled_inputs(batch, images, generator, tiles, lambda n: image_tokens(*layouts[n], per_tile), IMAGE_SIZE)
