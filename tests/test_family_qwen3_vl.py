"""Qwen3-VL specifics: real-size layouts from the real image processor's grids, read the same way
from ``image_grid_thw`` and from the M-RoPE ``position_ids`` the model computes; video frames are
not image keys."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForImageTextToText, Qwen3VLConfig, Qwen3VLMoeConfig

from adapt_hooks.layout import Grid
from adapt_hooks.adapters.qwen3_vl import Qwen3VLAdapter
from adapt_hooks.tiny import qwen3_vl as tiny

#: Image sizes (height, width) in px of a two-image prompt.
SIZES = ((700, 1000), (480, 360))
TEXT = 42  # any text token


def _real_grids() -> torch.Tensor:
    """``image_grid_thw`` of :data:`SIZES` from Qwen3-VL's image processor (patch 16, merge 2)."""
    from transformers import Qwen2VLImageProcessorPil

    processor = Qwen2VLImageProcessorPil(patch_size=16, merge_size=2, temporal_patch_size=2)
    images = [(np.random.default_rng(0).random((h, w, 3)) * 255).astype("uint8") for h, w in SIZES]
    return processor(images=images, return_tensors="pt")["image_grid_thw"]


def _prompt(config, thw: torch.Tensor, video_frames: int = 0) -> torch.Tensor:
    """One row as the processor expands it: text, each image wrapped in vision start/end, then
    optionally a video of ``video_frames`` frames (each after its timestamp text), then text."""
    merge = config.vision_config.spatial_merge_size
    ids = [TEXT, TEXT]
    for t, h, w in thw.tolist():
        ids += [config.vision_start_token_id] + [config.image_token_id] * (t * h * w // merge**2)
        ids += [config.vision_end_token_id, TEXT]
    for _ in range(video_frames):
        ids += [TEXT, config.vision_start_token_id] + [config.video_token_id] * 4 + [config.vision_end_token_id]
    return torch.tensor([ids + [TEXT]])


@pytest.mark.parametrize("config_cls", [Qwen3VLConfig, Qwen3VLMoeConfig])
def test_real_config_grids_match_the_processor(config_cls):
    config = config_cls()  # the released checkpoints' token ids and vision tower
    assert (config.vision_config.patch_size, config.vision_config.spatial_merge_size) == (16, 2)
    thw = _real_grids()
    input_ids = _prompt(config, thw, video_frames=2)
    layout = Qwen3VLAdapter().layout(config, input_ids, {"image_grid_thw": thw})
    expected = [(int(h) // 2, int(w) // 2) for _, h, w in thw.tolist()]
    assert expected == [(22, 31), (15, 11)]  # one token per 32 px after resizing to multiples of 32
    first = expected[0][0] * expected[0][1]
    assert layout.grids == ((Grid(0, *expected[0]), Grid(first, *expected[1])),)
    # every image key is an image token, and every image token is a key: no start/end, no video
    is_key = torch.zeros_like(input_ids, dtype=torch.bool)
    is_key[0, layout.positions[0]] = True
    assert torch.equal(is_key, input_ids == config.image_token_id)


def test_generate_positions_give_the_same_grids_as_image_grid_thw():
    """``generate`` passes no ``image_grid_thw`` but the model's M-RoPE positions; real-size
    grids read from them match, left padding included."""
    model = AutoModelForImageTextToText.from_config(tiny.config())
    config, thw = model.config, _real_grids()
    row = _prompt(config, thw)
    input_ids = torch.cat([torch.zeros(1, 5, dtype=torch.long), row], 1)
    attention_mask = (torch.arange(input_ids.shape[1]) >= 5).long()[None]
    mm_token_type_ids = (input_ids == config.image_token_id).long()
    text = attention_mask.cumsum(-1) - 1
    vision, _ = model.model.get_rope_index(input_ids, mm_token_type_ids, thw, attention_mask=attention_mask)
    position_ids = torch.cat([text[None], vision])  # [4, B, L] as generate builds it
    adapter = Qwen3VLAdapter()
    from_positions = adapter.layout(config, input_ids, {"position_ids": position_ids})
    from_thw = adapter.layout(config, input_ids, {"image_grid_thw": thw})
    assert from_positions.grids == from_thw.grids
    assert torch.equal(from_positions.positions, from_thw.positions)
