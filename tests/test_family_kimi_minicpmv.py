"""Kimi K2.5 and MiniCPM-V layouts at the real checkpoints' sizes, from default configs and the
processors' own token layout (no weights), and the split of per-image grids among beam rows."""

from __future__ import annotations

import re
import types

import numpy as np
import pytest
import torch
from transformers import Kimi_K25Config, MiniCPMV4_6Config
from transformers.models.kimi_k25.processing_kimi_k25 import Kimi_K25Processor
from transformers.models.minicpmv4_6.processing_minicpmv4_6 import MiniCPMV4_6Processor

from adapt_hooks.adapters.base import grids_per_row
from adapt_hooks.adapters.kimi_k25 import KimiK25Adapter
from adapt_hooks.adapters.minicpmv import MiniCPMV4_6Adapter

PAD, TEXT = 3, 9
MARKERS = {"<image>": 5, "</image>": 6, "<slice>": 7, "</slice>": 8, "<P>": PAD}


def _ids(text: str) -> list[int]:
    pattern = "|".join(map(re.escape, sorted(MARKERS, key=len, reverse=True)))
    return [MARKERS.get(piece, TEXT) for piece in re.findall(f"{pattern}|.", text, flags=re.S)]


def _grids(layout) -> list[list[tuple[int, int]]]:
    return [[(g.height, g.width) for g in row] for row in layout.grids]


def test_kimi_one_grid_per_image_from_image_grid_thw():
    config = Kimi_K25Config(image_token_id=PAD)  # 2x2 merge kernel, as released
    fake = types.SimpleNamespace(image_token="<P>", image_processor=types.SimpleNamespace(merge_size=2))
    thw = torch.tensor([[1, 28, 42], [1, 16, 8]])
    text = "x" + "y".join(Kimi_K25Processor.replace_image_token(fake, {"image_grid_thw": thw}, i) for i in range(2))
    layout = KimiK25Adapter().layout(config, torch.tensor([_ids(text)]), {"image_grid_thw": thw})
    assert _grids(layout) == [[(14, 21), (8, 4)]]


@pytest.mark.parametrize(("mode", "divisor", "down"), [("16x", 16, 4), ("4x", 4, 2)])
def test_minicpmv_global_image_and_every_slice_are_grids(mode, divisor, down):
    config = MiniCPMV4_6Config(image_token_id=PAD)
    fake = types.SimpleNamespace(
        image_token="<P>", image_start_token="<image>", image_end_token="</image>", slice_start_token="<slice>",
        slice_end_token="</slice>", slice_mode=True,
    )
    # the global image and 2 x 3 slices (transformers 5.17's processor writes every slice at the first's size)
    sizes = np.array([[32, 32]] + [[28, 36]] * 6)
    inputs = {"grids": np.array([[2, 3]]), "num_patches_per_image": np.array([7]), "target_sizes": sizes}
    text = MiniCPMV4_6Processor.replace_image_token(fake, inputs, 0, image_token_divisor=divisor)
    kwargs = {"target_sizes": torch.tensor(sizes), "downsample_mode": mode}
    layout = MiniCPMV4_6Adapter().layout(config, torch.tensor([_ids(text)]), kwargs)
    assert _grids(layout) == [[(h // down, w // down) for h, w in sizes.tolist()]]


def test_minicpmv_refuses_a_config_without_image_token_id():
    with pytest.raises(ValueError, match="image_token_id"):
        MiniCPMV4_6Adapter().image_token_id(MiniCPMV4_6Config())


A, B, C = (2, 4), (4, 2), (2, 2)


@pytest.mark.parametrize(
    "units",
    [
        [A, A, B, C, B, C],  # every row's images (5.23 on: generate repeats each sample's group)
        [A, A, B, B, C, C],  # each image repeated in place (repeat_interleave before 5.23)
        [A, B, C],  # once per sample (MiniCPM-V before 5.23 encodes once and repeats the features)
    ],
)
def test_grids_per_row_of_two_beams(units):
    assert grids_per_row(units, [8, 8, 12, 12]) == [[A], [A], [B, C], [B, C]]


def test_grids_per_row_that_do_not_fit():
    assert grids_per_row([A, B], [8, 12]) is None
    assert grids_per_row([A, B, C], [8, 8]) is None


def test_kimi_image_and_video_prompt_gives_the_image_grid():
    """Kimi encodes videos through get_image_features: from 5.23 on, the guard still finds the
    images' encoder inputs (the video call comes after them)."""
    import adapt_hooks
    from adapt_hooks.tiny import tiny_inputs, tiny_model
    from adapt_hooks.tiny._common import VIDEO, VISION_END, VISION_START

    model = tiny_model("kimi_k25")
    inputs = tiny_inputs(model, 1)
    ids = inputs["input_ids"][0].tolist()
    ids = ids[:1] + [VISION_START, 10, 8] + [VIDEO] * 4 + [VISION_END] + ids[1:]  # a one-frame 4 x 4 patch chunk
    inputs = dict(  # (5.17's Kimi splits a chunk of several frames by t * h * w / 4 tokens, a transformers bug)
        inputs, input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
        pixel_values_videos=torch.randn(16, 3, 4, 4), video_grid_thw=torch.tensor([[1, 4, 4]]),
    )
    expected = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    with adapt_hooks.guard(model) as run:
        assert torch.equal(model.generate(**inputs, max_new_tokens=3, do_sample=False), expected)
        assert _grids(run._layout) == [[(2, 4)]]
