"""Llama 4 layouts at the released checkpoints' sizes, on prompts written by the real processor's
own code (no weights): 12x12 per 336 px tile plus the global view, separators excluded; only the
NoPE full-attention layers hooked."""

from __future__ import annotations

import re
import types

import torch
from transformers import Llama4Config
from transformers.models.llama4.processing_llama4 import Llama4Processor

from adapt_hooks.adapters.llama4 import Llama4Adapter
from adapt_hooks.layout import Grid

VOCAB = {"<|image_start|>": 1, "<|image_end|>": 2, "<|image|>": 3, "<|patch|>": 4, "<|tile_x_separator|>": 5,
         "<|tile_y_separator|>": 6}  # fmt: skip
TEXT = 9


def _ids(aspect_ratio: tuple[int, int], per_tile: int) -> list[int]:
    """Token ids of one image the processor splits into ``aspect_ratio`` tiles."""
    text = Llama4Processor._prompt_split_image(None, aspect_ratio, per_tile)
    pattern = "|".join(map(re.escape, VOCAB))
    return [VOCAB.get(piece, TEXT) for piece in re.findall(f"{pattern}|.", text)]


def _config() -> Llama4Config:  # Llama-4-Scout: 336 px tiles, patch 14, pixel shuffle 0.5, <|patch|> the image token
    return Llama4Config(vision_config={"image_size": 336, "patch_size": 14}, image_token_index=VOCAB["<|patch|>"])


def test_real_config_gives_one_12x12_grid_per_tile_and_the_global_view():
    config, adapter = _config(), Llama4Adapter()
    assert adapter.grid(config) == (12, 12)
    row0 = [TEXT] + _ids((2, 3), 144) + [TEXT] + _ids((1, 1), 144)  # 6 tiles + global, then an unsplit image
    row1 = [TEXT] + _ids((1, 2), 144)
    ids = torch.zeros(2, len(row0), dtype=torch.long)
    ids[0], ids[1, -len(row1) :] = torch.tensor(row0), torch.tensor(row1)
    layout = adapter.layout(config, ids, {})
    assert layout.grids[0] == tuple(Grid(144 * i, 12, 12) for i in range(8))
    assert len(layout.grids[1]) == 3
    assert bool((ids.gather(1, layout.positions) == VOCAB["<|patch|>"])[layout.valid].all())
    first_tile = layout.positions[0, :144]
    assert int(first_tile[0]) == 2 and torch.equal(first_tile.diff(), torch.ones(143, dtype=torch.long))


def test_only_the_nope_full_attention_layers_are_hooked():
    config = _config()  # 48 layers: every fourth is NoPE with full attention, the others chunked (8192)
    assert config.text_config.layer_types[:4] == ["chunked_attention"] * 3 + ["full_attention"]
    model = types.SimpleNamespace(config=config)
    assert Llama4Adapter().hookable_layers(model, [object()] * 48) == list(range(3, 48, 4))
