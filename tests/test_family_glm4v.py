"""GLM-4V specifics: real-size layouts from the real image processor's grids, read the same way
from ``image_grid_thw`` and from the model's M-RoPE ``position_ids``; video frames, which use the
image token, are not image keys."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForImageTextToText, Glm4vConfig, Glm4vMoeConfig

from adapt_hooks.layout import Grid
from adapt_hooks.adapters.glm4v import Glm4vAdapter
from adapt_hooks.tiny import glm4v as tiny

#: Image sizes (height, width) in px of a two-image prompt.
SIZES = ((700, 1000), (480, 360))
TEXT = 42  # any text token


def _real_grids() -> torch.Tensor:
    """``image_grid_thw`` of :data:`SIZES` from GLM-4V's image processor (patch 14, merge 2)."""
    from transformers import Glm4vImageProcessorPil

    processor = Glm4vImageProcessorPil(patch_size=14, merge_size=2, temporal_patch_size=2)
    images = [(np.random.default_rng(0).random((h, w, 3)) * 255).astype("uint8") for h, w in SIZES]
    return processor(images=images, return_tensors="pt")["image_grid_thw"]


def _prompt(config, thw: torch.Tensor, video_frames: int = 0, frame_tokens: int = 4) -> torch.Tensor:
    """One row as the processor expands it: text, each image wrapped in begin/end of image, then
    optionally a video whose frames are ``<|begin_of_image|>`` + image tokens + ``<|end_of_image|>``
    + timestamp inside ``<|begin_of_video|>`` ... ``<|end_of_video|>``, then text."""
    merge = config.vision_config.spatial_merge_size
    ids = [TEXT, TEXT]
    for t, h, w in thw.tolist():
        ids += [config.image_start_token_id] + [config.image_token_id] * (t * h * w // merge**2)
        ids += [config.image_end_token_id, TEXT]
    if video_frames:
        ids.append(config.video_start_token_id)
        for _ in range(video_frames):
            ids += [config.image_start_token_id] + [config.image_token_id] * frame_tokens
            ids += [config.image_end_token_id, TEXT]
        ids.append(config.video_end_token_id)
    return torch.tensor([ids + [TEXT]])


def _token_types(config, input_ids: torch.Tensor) -> torch.Tensor:
    """``mm_token_type_ids`` as the processor writes them: 1 image, 2 video frame, 0 text."""
    is_token = input_ids == config.image_token_id
    starts = (input_ids == config.video_start_token_id).cumsum(-1)
    in_video = starts > (input_ids == config.video_end_token_id).cumsum(-1)
    return is_token.long() + (is_token & in_video).long()


@pytest.mark.parametrize("config_cls", [Glm4vConfig, Glm4vMoeConfig])
def test_real_config_grids_match_the_processor_and_skip_video(config_cls):
    config = config_cls()  # the released checkpoints' token ids and vision tower
    assert (config.vision_config.patch_size, config.vision_config.spatial_merge_size) == (14, 2)
    thw = _real_grids()
    input_ids = _prompt(config, thw, video_frames=2)
    layout = Glm4vAdapter().layout(config, input_ids, {"image_grid_thw": thw})
    expected = [(int(h) // 2, int(w) // 2) for _, h, w in thw.tolist()]
    assert expected == [(25, 36), (17, 13)]  # one token per 28 px after resizing to multiples of 28
    first = expected[0][0] * expected[0][1]
    assert layout.grids == ((Grid(0, *expected[0]), Grid(first, *expected[1])),)
    # the keys are exactly the image tokens outside the video: no markers, no video frames
    is_key = torch.zeros_like(input_ids, dtype=torch.bool)
    is_key[0, layout.positions[0]] = True
    assert torch.equal(is_key, _token_types(config, input_ids) == 1)


def test_generate_positions_give_the_same_grids_as_image_grid_thw():
    """``generate`` passes no ``image_grid_thw`` but the model's M-RoPE positions; real-size
    grids read from them match, with left padding and a video after the images."""
    model = AutoModelForImageTextToText.from_config(tiny.config())
    config, thw = model.config, _real_grids()
    row = _prompt(config, thw, video_frames=2, frame_tokens=6)
    input_ids = torch.cat([torch.zeros(1, 5, dtype=torch.long), row], 1)
    attention_mask = (torch.arange(input_ids.shape[1]) >= 5).long()[None]
    video_thw = torch.tensor([[2, 4, 6]])  # 2 frames of 2x3 tokens
    text = attention_mask.cumsum(-1) - 1
    vision, _ = model.model.get_rope_index(
        input_ids, _token_types(config, input_ids), thw, video_thw, attention_mask=attention_mask
    )
    position_ids = torch.cat([text[None], vision])  # [4, B, L] as generate builds it
    adapter = Glm4vAdapter()
    from_positions = adapter.layout(config, input_ids, {"position_ids": position_ids})
    from_thw = adapter.layout(config, input_ids, {"image_grid_thw": thw})
    assert from_positions.grids == from_thw.grids
    assert torch.equal(from_positions.positions, from_thw.positions)
