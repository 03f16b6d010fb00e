"""Tiny LFM2-VL: a SigLIP2 NaFlex vision tower (patch 4, images at their own size), a 2x2 pixel
unshuffle, and an LFM2 decoder of short convolutions (layers 0, 2) and full attention (1, 3).

Prompts follow the real processor: row 0 has one unsplit image of 6x8 patches (a 3x4 grid),
``<|image_start|>`` + 12 image tokens + ``<|image_end|>``; row 1 has an image split into 1x2
tiles of 4x4 patches plus a 4x8-patch thumbnail, ``<|image_start|><|img_row_1_col_1|>`` + 4 tokens
+ ``<|img_row_1_col_2|>`` + 4 tokens + ``<|img_thumbnail|>`` + 8 tokens + ``<|image_end|>``. The
images arrive as the processor gives them: patches padded to a common count, with
``pixel_attention_mask`` and ``spatial_shapes``.
"""

from __future__ import annotations

import torch

from ._common import BOS, FIRST_TEXT_ID, IMAGE, PAD, TEXT, VISION_END, VISION_START, left_pad, text_tokens

PATCH, FACTOR = 4, 2
LAYER_TYPES = ["conv", "full_attention", "conv", "full_attention"]
#: ``<|img_thumbnail|>``; the ``<|img_row_r_col_c|>`` markers are text ids.
THUMBNAIL = 8
#: Each row's image (cycled): a list of tiles' patch shapes and a thumbnail's (None: unsplit image).
IMAGES = (([(6, 8)], None), ([(4, 4), (4, 4)], (4, 8)))


def config():
    from transformers import Lfm2VlConfig

    vision = dict(
        model_type="siglip2_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, patch_size=PATCH, num_patches=16,
    )
    text = dict(TEXT, model_type="lfm2", layer_types=LAYER_TYPES, block_auto_adjust_ff_dim=False)
    return Lfm2VlConfig(
        vision_config=vision, text_config=text, image_token_id=IMAGE, projector_hidden_size=32,
        downsample_factor=FACTOR, pad_token_id=PAD,
    )


def image_tokens(tiles: list[tuple[int, int]], thumbnail: tuple[int, int] | None) -> list[int]:
    """The processor's expansion of one image: tiles (each after its row/col marker) and thumbnail."""
    tokens = lambda h, w: [IMAGE] * ((h // FACTOR) * (w // FACTOR))  # noqa: E731
    if thumbnail is None:
        (h, w), = tiles
        return [VISION_START] + tokens(h, w) + [VISION_END]
    ids = [VISION_START]
    for i, (h, w) in enumerate(tiles):
        ids += [FIRST_TEXT_ID + i] + tokens(h, w)  # <|img_row_1_col_{i+1}|>
    return ids + [THUMBNAIL] + tokens(*thumbnail) + [VISION_END]


def inputs(model, batch: int, images: bool, generator: torch.Generator) -> dict[str, torch.Tensor]:
    rows, shapes = [], []
    for b in range(batch):
        image: list[int] = []
        if images:
            tiles, thumbnail = IMAGES[b % len(IMAGES)]
            image = image_tokens(tiles, thumbnail)
            shapes += tiles + ([thumbnail] if thumbnail else [])
        rows.append([BOS] + image + text_tokens(b, generator))
    out = left_pad(rows)
    if images:
        longest = max(h * w for h, w in shapes)
        pixel_values = torch.zeros(len(shapes), longest, 3 * PATCH * PATCH)
        mask = torch.zeros(len(shapes), longest, dtype=torch.int32)
        for i, (h, w) in enumerate(shapes):
            pixel_values[i, : h * w] = torch.randn(h * w, 3 * PATCH * PATCH, generator=generator)
            mask[i, : h * w] = 1
        out.update(pixel_values=pixel_values, pixel_attention_mask=mask, spatial_shapes=torch.tensor(shapes))
    return out
