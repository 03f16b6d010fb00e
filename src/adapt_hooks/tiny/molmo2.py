"""Tiny Molmo2: 32 px crops of 4 px patches (8x8 patches, pooled 2x2 into 4x4 tokens), overlap
margins of one patch, a 2-layer vision tower whose last and first layers feed the pooling adapter,
and 4 Molmo2 text layers.

Inputs follow the real image processor (``image_token_pooling`` built with its own
``arange_for_pooling``) and processor: each image is a global crop and its overlapping crops
(``tiling``), and the prompt is ``<low_res_im_start>`` + 4 rows of 4 ``<im_patch>`` + ``<im_col>``,
``<im_end>``, then ``<im_start>`` + the high-resolution rows + ``<im_end>``; ``mm_token_type_ids``
mark all of them. Row 0's image is tiled 1x2 (a 4x7 high-resolution grid), row 1's 2x1 (7x4).
"""

from __future__ import annotations

import torch

from .. import compat
from ._common import BOS, IMAGE, PAD, TEXT, VISION_END, VISION_START, left_pad, text_tokens

CROP, PATCH, MARGINS, POOL = 32, 4, (1, 1), (2, 2)
#: ``<low_res_im_start>`` and ``<im_col>``; ``<im_start>``/``<im_end>`` are the vision start/end ids.
LOW_RES_START, COL = 8, 9
#: Crop tiling (rows, cols) of each row's image (cycled).
TILINGS = ((1, 2), (2, 1))


def config():
    from transformers import Molmo2Config

    heads = dict(num_attention_heads=4, num_key_value_heads=4, head_dim=8)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, image_size=[CROP, CROP], patch_size=PATCH, **heads)
    adapter = dict(vision_feature_layer=[-1, 0], hidden_size=32, intermediate_size=64, text_hidden_size=32, **heads)
    text = {k: v for k, v in TEXT.items() if k not in ("pad_token_id", "bos_token_id", "eos_token_id")}
    return Molmo2Config(
        vision_config=vision, adapter_config=adapter, text_config=dict(text, head_dim=8, additional_vocab_size=0),
        image_patch_id=IMAGE, image_start_token_id=VISION_START, low_res_image_start_token_id=LOW_RES_START,
        image_end_token_id=VISION_END, frame_start_token_id=VISION_START, frame_end_token_id=VISION_END,
    )


def image_pooling(tiling: tuple[int, int]) -> tuple[torch.Tensor, list[int]]:
    """``image_token_pooling`` (patch indices within the image's crops, global crop first) and the
    ``image_grids`` row of one image tiled ``tiling``, as the image processor computes them."""
    from transformers.models.molmo2.image_processing_molmo2 import arange_for_pooling

    (tiles_h, tiles_w), (left, right), side = tiling, MARGINS, CROP // PATCH
    index = torch.arange(tiles_h * tiles_w * side * side, dtype=torch.int32).reshape(tiles_h, tiles_w, side, side)
    index[1:, :, :left, :] = index[:, 1:, :, :left] = -1  # the overlap margins between crops
    index[:-1, :, -right:, :] = index[:, :-1, :, -right:] = -1
    window = side - left - right
    index = index.permute(0, 2, 1, 3).reshape(-1)
    canvas = index[index >= 0].reshape(tiles_h * window + left + right, tiles_w * window + left + right)
    high, rows, cols = arange_for_pooling(canvas, *POOL)
    low, low_rows, low_cols = arange_for_pooling(torch.arange(side * side, dtype=torch.int32).reshape(side, side), *POOL)
    high = torch.where(high >= 0, high + side * side, -1)
    return torch.cat([low, high]), [low_rows, low_cols, rows, cols]


def image_tokens(grid: list[int]) -> list[int]:
    """The processor's expansion of one image of ``image_grids`` row ``grid``."""
    low_h, low_w, high_h, high_w = grid
    low = [LOW_RES_START] + ([IMAGE] * low_w + [COL]) * low_h + [VISION_END]
    return low + [VISION_START] + ([IMAGE] * high_w + [COL]) * high_h + [VISION_END]


def inputs(model, batch: int, images: bool, generator: torch.Generator) -> dict[str, torch.Tensor]:
    rows, pooling, grids, crops = [], [], [], []
    for b in range(batch):
        image: list[int] = []
        if images:
            tiling = TILINGS[b % len(TILINGS)]
            indices, grid = image_pooling(tiling)
            offset = 0 if compat.MOLMO2_POOLING_PER_IMAGE else sum(crops) * (CROP // PATCH) ** 2
            pooling.append(torch.where(indices >= 0, indices + offset, -1))
            grids.append(grid)
            crops.append(1 + tiling[0] * tiling[1])
            image = image_tokens(grid)
        rows.append([BOS] + image + text_tokens(b, generator))
    out = left_pad(rows)
    marks = torch.tensor([IMAGE, COL, VISION_START, LOW_RES_START, VISION_END])
    out["mm_token_type_ids"] = torch.isin(out["input_ids"], marks).long()
    if images:
        n_patches = (CROP // PATCH) ** 2
        out["pixel_values"] = torch.randn(sum(crops), n_patches, PATCH * PATCH * 3, generator=generator)
        out["image_token_pooling"] = torch.cat(pooling)
        out["image_grids"] = torch.tensor(grids)
        out["image_num_crops"] = torch.tensor(crops)
    return out
