"""Aya Vision layouts at the real checkpoint's sizes, from configs and the processor's own token
layout (no weights): 13x13 per 364 px tile, global tile included; only full-attention layers hook."""

from __future__ import annotations

import re
import types

import pytest
import torch
from transformers import AyaVisionConfig, Cohere2Config
from transformers.models.aya_vision.processing_aya_vision import AyaVisionProcessor

import adapt_hooks
from adapt_hooks import Anchor, DriftMonitor
from adapt_hooks.adapters.aya_vision import AyaVisionAdapter
from adapt_hooks.tiny import tiny_inputs

from .conftest import _model, generate

PATCH_TOKEN, TEXT = 3, 9
VOCAB = {"<|START_OF_IMG|>": 1, "<|END_OF_IMG|>": 2, "<|IMG_PATCH|>": PATCH_TOKEN, "TILE": 4, "TILE_GLOBAL": 5}

#: CohereForAI/aya-vision-8b: SigLIP at 364 px, patch 14, pixel shuffle 2; Cohere2 with 32 layers.
REAL = dict(
    vision_config=dict(model_type="siglip_vision_model", image_size=364, patch_size=14, hidden_size=1152,
                       intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16, vision_use_head=False),
    downsample_factor=2, image_token_index=PATCH_TOKEN,
)


def _processor_ids(tiles: int) -> list[int]:
    """Token ids of one image of ``tiles`` tiles (global included) as the processor writes it."""
    fake = types.SimpleNamespace(
        img_size=364, patch_size=28, start_of_img_token="<|START_OF_IMG|>", end_of_img_token="<|END_OF_IMG|>",
        tile_token="TILE", tile_global_token="TILE_GLOBAL", img_patch_token="<|IMG_PATCH|>",
    )
    text = AyaVisionProcessor.replace_image_token(fake, {"num_patches": [tiles]}, 0)
    pattern = "|".join(map(re.escape, sorted(VOCAB, key=len, reverse=True)))
    return [VOCAB.get(piece, TEXT) for piece in re.findall(f"{pattern}|.", text)]


def test_real_config_gives_13x13_per_tile_like_the_processor():
    config = AyaVisionConfig(**REAL)
    adapter = AyaVisionAdapter()
    assert adapter.grid(config) == (13, 13)
    row0, row1 = _processor_ids(5), _processor_ids(1)  # 4 crops + global; global alone
    ids = torch.full((2, len(row0) + 1), TEXT)
    ids[0, 1:], ids[1, -len(row1) :] = torch.tensor(row0), torch.tensor(row1)
    layout = adapter.layout(config, ids, {})
    assert [[(g.height, g.width) for g in row] for row in layout.grids] == [[(13, 13)] * 5, [(13, 13)]]
    assert layout.valid.sum(-1).tolist() == [5 * 169, 169]
    assert bool((ids.gather(1, layout.positions) == PATCH_TOKEN)[layout.valid].all())


def test_only_full_attention_layers_are_hookable():
    adapter = AyaVisionAdapter()
    model = types.SimpleNamespace(config=AyaVisionConfig(text_config=Cohere2Config(num_hidden_layers=32)))
    assert adapter.hookable_layers(model, [object()] * 32) == list(range(3, 32, 4))
    text = Cohere2Config(num_hidden_layers=4, layer_types=["sliding_attention"] * 4)
    with pytest.raises(ValueError, match="no full-attention layer"):
        adapter.hookable_layers(types.SimpleNamespace(config=AyaVisionConfig(text_config=text)), [object()] * 4)


def test_guard_hooks_the_full_layers_and_records_their_attention():
    """The tiny model alternates sliding (16-token window) and full layers: only full layers are
    hooked, and the anchor maps are their returned attentions on the image keys."""
    model = _model("aya_vision", "eager")
    inputs = tiny_inputs(model, 2)
    with adapt_hooks.guard(model, anchor=Anchor(k=3), monitor=DriftMonitor(steer=False)) as run:
        out = generate(model, inputs, max_new_tokens=6, output_attentions=True, return_dict_in_generate=True)
    assert run.layers == [1, 3]
    pos, valid = run.anchor.layout.positions, run.anchor.layout.valid
    steps = [
        torch.stack([out.attentions[t][i][:, :, -1].double().mean(1).gather(1, pos) * valid for i in run.layers], 1)
        for t in (1, 2, 3)
    ]
    torch.testing.assert_close(run.anchor.maps.double(), torch.stack(steps).mean(0), rtol=1e-5, atol=1e-7)
