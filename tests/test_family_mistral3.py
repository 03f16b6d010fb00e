"""Mistral 3 layouts at the real checkpoint's sizes (no weights): one token per 28 px, one grid per
image read from the [IMG] / [IMG_BREAK] / [IMG_END] rows, with or without image_sizes."""

from __future__ import annotations

import types

import pytest
import torch
from transformers import Mistral3Config, MistralConfig

from adapt_hooks.adapters.mistral3 import Mistral3Adapter

IMG, BREAK, END, TEXT = 10, 12, 13, 20  # the Tekken tokenizer's [IMG], [IMG_BREAK], [IMG_END]


def _image(height: int, width: int, step: int = 28) -> list[int]:
    """The Pixtral processor's tokens for an image of ``height x width`` px (``replace_image_token``)."""
    tokens = ([IMG] * (width // step) + [BREAK]) * (height // step)
    tokens[-1] = END
    return tokens


def test_real_config_reads_each_image_grid_from_the_prompt():
    config = Mistral3Config()  # Mistral-Small-3.1: patch 14, merge 2, [IMG] = 10
    adapter = Mistral3Adapter()
    sizes = [(1036, 784), (28, 560), (280, 28)]  # 37x28, a single row, a single column
    row0 = [1] + _image(*sizes[0]) + _image(*sizes[1]) + [TEXT]  # two images back to back
    row1 = [1, TEXT] + _image(*sizes[2]) + [TEXT] * 3
    assert len(_image(*sizes[0])) == (28 + 1) * 37  # the processor's own count
    ids = torch.zeros(2, len(row0), dtype=torch.long)
    ids[0], ids[1, -len(row1) :] = torch.tensor(row0), torch.tensor(row1)
    expected = [[(37, 28), (1, 20)], [(10, 1)]]
    for inputs in ({}, {"image_sizes": torch.tensor(sizes)}):  # generate() passes no image_sizes
        layout = adapter.layout(config, ids, inputs)
        assert [[(g.height, g.width) for g in row] for row in layout.grids] == expected
        assert bool((ids.gather(1, layout.positions) == IMG)[layout.valid].all())
        assert layout.valid.sum(-1).tolist() == [37 * 28 + 20, 10]


def test_image_sizes_that_disagree_with_the_prompt_are_refused():
    ids = torch.tensor([[1] + _image(56, 84) + [TEXT]])
    with pytest.raises(ValueError, match=r"grids \[\(2, 3\)\] but image_sizes gives \[\(3, 2\)\]"):
        Mistral3Adapter().layout(Mistral3Config(), ids, {"image_sizes": torch.tensor([[84, 56]])})


def test_sliding_window_text_models_are_refused():
    model = types.SimpleNamespace(config=Mistral3Config(text_config=MistralConfig(sliding_window=4096)))
    with pytest.raises(ValueError, match="sliding window of 4096"):
        Mistral3Adapter().hookable_layers(model, [object()] * 2)
