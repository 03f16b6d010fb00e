"""Tiny Idefics3 and SmolVLM: SigLIP-like vision tower, pixel shuffle, Llama text.

Each tile is one square vision image whose patches a pixel shuffle merges into a 4x4 grid of
image tokens (Idefics3: 32 px, patch 4, scale 2; SmolVLM: 64 px, patch 4, scale 4). Prompts
follow the real processors: per tile ``<fake_token_around_image><row_r_col_c>`` + the tile's image
tokens, ``\\n`` after each tile row, then ``\\n<fake_token_around_image><global-img>`` + the
global image's tokens + ``<fake_token_around_image>``. Row 0's image is split 2x2, row 1's 1x2, so
a batch mixes tile counts (``pixel_values`` is padded with all-zero tiles, as the processor does).
"""

from __future__ import annotations

import torch

from ._common import BOS, FIRST_TEXT_ID, IMAGE, PAD, TEXT, left_pad, text_tokens

#: Token ids of the separators (the real tokenizers' added tokens); ``<row_r_col_c>`` are text ids.
FAKE_AROUND_IMAGE, GLOBAL_IMAGE, NEWLINE = 7, 8, 9
#: Tiles (rows, cols) of each batch row's image; (0, 0) would be an unsplit image (global only).
TILINGS = ((2, 2), (1, 2))
#: model_type -> (vision image_size, patch_size, pixel-shuffle scale_factor)
VISION = {"idefics3": (32, 4, 2), "smolvlm": (64, 4, 4)}


def row_col(r: int, c: int) -> int:
    """Token id of ``<row_{r+1}_col_{c+1}>`` (the processor allows up to 6 x 6 tiles)."""
    return FIRST_TEXT_ID + 6 * r + c


def config(model_type: str = "idefics3"):
    from transformers import Idefics3Config, SmolVLMConfig

    image_size, patch, scale = VISION[model_type]
    vision = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        image_size=image_size, patch_size=patch,
    )
    config_cls = Idefics3Config if model_type == "idefics3" else SmolVLMConfig
    return config_cls(
        vision_config=vision, text_config=dict(TEXT, model_type="llama"), image_token_id=IMAGE,
        scale_factor=scale, pad_token_id=PAD,
    )


def image_tokens(rows: int, cols: int, per_tile: int) -> list[int]:
    """The processor's expansion of one ``<image>`` split into ``rows x cols`` tiles."""
    if rows == cols == 0:
        return [FAKE_AROUND_IMAGE, GLOBAL_IMAGE] + [IMAGE] * per_tile + [FAKE_AROUND_IMAGE]
    ids: list[int] = []
    for r in range(rows):
        for c in range(cols):
            ids += [FAKE_AROUND_IMAGE, row_col(r, c)] + [IMAGE] * per_tile
        ids.append(NEWLINE)
    return ids + [NEWLINE, FAKE_AROUND_IMAGE, GLOBAL_IMAGE] + [IMAGE] * per_tile + [FAKE_AROUND_IMAGE]


def inputs(model, batch: int, images: bool, generator: torch.Generator) -> dict[str, torch.Tensor]:
    config = model.config
    vision = config.vision_config
    per_tile = ((vision.image_size // vision.patch_size) // config.scale_factor) ** 2
    rows, n_tiles = [], []
    for b in range(batch):
        image: list[int] = []
        if images:
            tile_rows, tile_cols = TILINGS[b % len(TILINGS)]
            image = image_tokens(tile_rows, tile_cols, per_tile)
            n_tiles.append(tile_rows * tile_cols + 1)
        rows.append([BOS] + image + text_tokens(b, generator))
    out = left_pad(rows)
    if images:
        size = vision.image_size
        pixel_values = torch.zeros(batch, max(n_tiles), 3, size, size)
        pixel_attention_mask = torch.zeros(batch, max(n_tiles), size, size, dtype=torch.bool)
        for b, n in enumerate(n_tiles):
            pixel_values[b, :n] = torch.randn(n, 3, size, size, generator=generator)
            pixel_attention_mask[b, :n] = True
        out["pixel_values"] = pixel_values
        out["pixel_attention_mask"] = pixel_attention_mask
    return out
