"""LFM2-VL: the layout of a real-size config on the real processor's image prompt (its own token
builder, over a word-level vocabulary), and ``spatial_shapes`` in either order ``generate`` gives it."""

from __future__ import annotations

import re

import torch

from adapt_hooks.adapters.lfm2_vl import Lfm2VlAdapter
from adapt_hooks.layout import Grid


def processor_prompt(rows: int, cols: int, per_tile: int, thumbnail: int) -> torch.Tensor:
    """``<image>`` as the real Lfm2VlProcessor expands it, one id per special token."""
    from transformers import Lfm2VlProcessor

    proc = Lfm2VlProcessor.__new__(Lfm2VlProcessor)  # its token builder needs no tokenizer or image processor
    proc.image_token, proc.image_start_token, proc.image_end_token = "<image>", "<|image_start|>", "<|image_end|>"
    proc.image_thumbnail_token = "<|img_thumbnail|>"
    text = proc._build_image_tokens(rows, cols, per_tile, thumbnail, True, True)
    tokens = re.findall(r"<[^>]+>", text)
    vocab = {t: i for i, t in enumerate(dict.fromkeys(["<image>"] + tokens))}
    return torch.tensor([[vocab[t] for t in tokens]])


def test_real_processor_prompt_gives_one_grid_per_tile_and_thumbnail():
    from transformers import Lfm2VlConfig

    config = Lfm2VlConfig(image_token_id=0)  # as in a checkpoint, whose config matches its tokenizer
    ids = processor_prompt(2, 3, 256, 10 * 14)  # 512 px tiles of 32x32 patches, a 20x28-patch thumbnail
    shapes = torch.tensor([[32, 32]] * 6 + [[20, 28]])
    layout = Lfm2VlAdapter().layout(config, ids, {"spatial_shapes": shapes})
    assert layout.grids[0] == tuple(Grid(256 * i, 16, 16) for i in range(6)) + (Grid(1536, 10, 14),)
    assert layout.positions[0].tolist() == torch.nonzero(ids[0] == 0).flatten().tolist()


def test_spatial_shapes_repeated_per_image_or_per_sample():
    """Before 5.23 ``generate`` repeats each image for its beams (A, A, B, B); from 5.23 the guard
    repeats each sample's images (A, B, A, B). Both give the prompt's grids."""
    from transformers import Lfm2VlConfig

    config = Lfm2VlConfig(image_token_id=0)
    single = processor_prompt(1, 1, 256, 12)[0].tolist()  # one 6x8-patch image: 3x4 tokens
    tiled = processor_prompt(1, 2, 4, 8)[0].tolist()  # two 4x4-patch tiles and a 4x8-patch thumbnail
    width = max(len(single), len(tiled))
    ids = torch.tensor([[9] * (width - len(row)) + row for row in (single, single, tiled, tiled)])
    a, t, th = [6, 8], [4, 4], [4, 8]
    expected = [[(3, 4)], [(3, 4)], [(2, 2), (2, 2), (2, 4)], [(2, 2), (2, 2), (2, 4)]]
    for order in ([a, a, t, t, t, t, th, th], [a, a, t, t, th, t, t, th]):
        layout = Lfm2VlAdapter().layout(config, ids, {"spatial_shapes": torch.tensor(order)})
        assert [[(g.height, g.width) for g in row] for row in layout.grids] == expected


def test_a_guard_and_a_drift_injection_nest_their_image_captures():
    """Both read ``spatial_shapes`` back from the image encoding (5.23+), in either nesting, and
    leave the model's ``get_image_features`` as they found it."""
    import adapt_hooks
    from adapt_hooks import DriftMonitor, stress
    from adapt_hooks.tiny import tiny_inputs, tiny_model

    model = tiny_model("lfm2_vl", "eager")
    inputs = tiny_inputs(model, 2)
    for nested in (False, True):
        drift = stress.inject_drift(model, "decay", 1.0, start_step=1)
        guard = adapt_hooks.guard(model, monitor=DriftMonitor(steer=False))
        first, second = (guard, drift) if nested else (drift, guard)
        with first as outer, second as inner:
            model.generate(**inputs, max_new_tokens=3, do_sample=False)
        assert [len(row) for row in (outer if nested else inner).anchor.layout.grids] == [1, 3]
        assert "get_image_features" not in vars(model.base_model)
