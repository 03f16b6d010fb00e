"""InternVL layouts at the real checkpoints' sizes, from configs and the processor's own token
layout (no weights): 16x16 per 448 px tile, one grid per tile, thumbnail included."""

from __future__ import annotations

import re
import types

import torch
from transformers import InternVLConfig
from transformers.models.internvl.processing_internvl import InternVLProcessor

from adapt_hooks.layout import Grid
from adapt_hooks.adapters.internvl import InternVLAdapter

START, END, CONTEXT, TEXT = 1, 2, 3, 9


def _processor_ids(tiles: list[int], seq_length: int) -> list[int]:
    """Token ids of one prompt holding an image per entry of ``tiles``, written by the processor."""
    fake = types.SimpleNamespace(
        start_image_token="<img>", end_image_token="</img>", image_token="<C>", image_seq_length=seq_length
    )
    text = "x".join(InternVLProcessor.replace_image_token(fake, {"num_patches": tiles}, i) for i in range(len(tiles)))
    vocab = {"<img>": START, "</img>": END, "<C>": CONTEXT}
    return [vocab.get(piece, TEXT) for piece in _split(text, vocab)]


def _split(text: str, vocab: dict[str, int]) -> list[str]:
    pattern = "|".join(map(re.escape, sorted(vocab, key=len, reverse=True)))
    return re.findall(f"{pattern}|.", text)


def test_real_config_gives_16x16_per_tile_like_the_processor():
    config = InternVLConfig(image_token_id=CONTEXT)  # InternVL3 defaults: 448 px tiles, patch 14, ratio 0.5
    adapter = InternVLAdapter()
    assert adapter.grid(config) == (16, 16) and config.image_seq_length == 256
    ids = _processor_ids([7], config.image_seq_length)  # 6 crops + thumbnail
    layout = adapter.layout(config, torch.tensor([[TEXT] + ids]), {})
    assert layout.grids == (tuple(Grid(256 * i, 16, 16) for i in range(7)),)
    assert layout.positions[0, 0] == 2 and layout.positions[0, -1] == 1 + 1 + 7 * 256 - 1


def test_several_images_and_rows_with_padding():
    config = InternVLConfig(image_token_id=CONTEXT)
    row0 = _processor_ids([1, 3], 256)  # two images in one prompt: 1 tile, then 2 crops + thumbnail
    row1 = _processor_ids([1], 256)
    ids = torch.zeros(2, len(row0), dtype=torch.long)
    ids[0], ids[1, len(row0) - len(row1) :] = torch.tensor(row0), torch.tensor(row1)
    layout = InternVLAdapter().layout(config, ids, {})
    assert [len(g) for g in layout.grids] == [4, 1]
    assert layout.valid.sum(-1).tolist() == [4 * 256, 256]
    assert int(layout.positions[1, 0]) == len(row0) - len(row1) + 1  # after the left padding and <img>
