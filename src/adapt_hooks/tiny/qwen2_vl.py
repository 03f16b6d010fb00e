"""Tiny Qwen2-VL and Qwen2.5-VL: row b's image is a (1, 8, 8) or (1, 8, 12) patch grid, i.e. a
4x4 or 4x6 token grid after the 2x2 merge, so a batch mixes grid sizes."""

from __future__ import annotations

import torch

from ._common import BOS, IMAGE, PAD, TEXT, VIDEO, VISION_END, VISION_START, left_pad, text_tokens

IMAGE_GRIDS = ((1, 8, 8), (1, 8, 12))


def config(model_type: str = "qwen2_vl"):
    from transformers import Qwen2_5_VLConfig, Qwen2VLConfig

    text = dict(TEXT, rope_parameters={"rope_type": "default", "mrope_section": [1, 1, 2], "rope_theta": 10000.0})
    common = dict(num_heads=4, patch_size=14, spatial_merge_size=2, temporal_patch_size=2, depth=2)
    if model_type == "qwen2_vl":
        config_cls, vision = Qwen2VLConfig, dict(common, embed_dim=32, hidden_size=32)
    else:
        config_cls = Qwen2_5_VLConfig
        vision = dict(common, hidden_size=32, out_hidden_size=32, intermediate_size=64, fullatt_block_indexes=[1], window_size=56)
    return config_cls(
        vision_config=vision, text_config=text, image_token_id=IMAGE, video_token_id=VIDEO,
        vision_start_token_id=VISION_START, vision_end_token_id=VISION_END, pad_token_id=PAD,
    )


def inputs(model, batch: int, images: bool, generator: torch.Generator) -> dict[str, torch.Tensor]:
    vision = model.config.vision_config
    rows, pixels, grids = [], [], []
    for b in range(batch):
        image: list[int] = []
        if images:
            t, h, w = IMAGE_GRIDS[b % len(IMAGE_GRIDS)]
            image = [VISION_START] + [IMAGE] * (t * h * w // vision.spatial_merge_size**2) + [VISION_END]
            patch_dim = 3 * vision.temporal_patch_size * vision.patch_size**2
            pixels.append(torch.randn(t * h * w, patch_dim, generator=generator))
            grids.append((t, h, w))
        rows.append([BOS] + image + text_tokens(b, generator))
    return batch_inputs(rows, pixels, grids)


def batch_inputs(rows: list[list[int]], pixels: list[torch.Tensor], grids: list[tuple[int, int, int]]) -> dict[str, torch.Tensor]:
    """Left-padded prompts with ``mm_token_type_ids``, plus the images' flattened patches and
    ``image_grid_thw`` when there are images: the inputs of every M-RoPE family."""
    out = left_pad(rows)
    out["mm_token_type_ids"] = (out["input_ids"] == IMAGE).long()
    if pixels:
        out["pixel_values"] = torch.cat(pixels)
        out["image_grid_thw"] = torch.tensor(grids)
    return out
