"""Mllama: image keys live on the cross-attention key axis (tiles x (CLS + patch grid)), not in
the prompt. Layouts of a real-size config without building the model, interleaved images,
precomputed vision states, and the anchor recomputed from the attentions the model returns."""

from __future__ import annotations

import types

import pytest
import torch
from transformers import MllamaConfig
from transformers.models.mllama.modeling_mllama import MllamaTextCrossAttention
from transformers.models.mllama.processing_mllama import (
    convert_sparse_cross_attention_mask_to_dense,
    get_cross_attention_token_mask,
)

import adapt_hooks
from adapt_hooks import Anchor, DriftMonitor
from adapt_hooks.layout import Grid
from adapt_hooks.adapters.mllama import MllamaAdapter
from adapt_hooks.tiny import tiny_inputs

from .conftest import _model, generate

IMG, BOS = 128256, 128000


def real_config() -> MllamaConfig:
    """The values of meta-llama/Llama-3.2-11B-Vision(-Instruct) that the layout depends on."""
    return MllamaConfig(
        vision_config=dict(image_size=560, patch_size=14, max_num_tiles=4),
        text_config=dict(num_hidden_layers=40, cross_attention_layers=[3, 8, 13, 18, 23, 28, 33, 38]),
        image_token_index=IMG,
    )


def processor_inputs(rows: list[list[int]], tiles: list[list[int]], max_tiles: int = 4) -> dict[str, torch.Tensor]:
    """What the Mllama processor returns for token rows (same length) whose images have ``tiles``
    tiles each; ``pixel_values`` only has the right shape (the layout reads nothing else of it)."""
    batch, n_images = len(rows), max(map(len, tiles))
    token_masks = [get_cross_attention_token_mask(row, IMG) for row in rows]
    cross = convert_sparse_cross_attention_mask_to_dense(token_masks, tiles, max_tiles, len(rows[0]))
    tile_mask = torch.zeros(batch, n_images, max_tiles, dtype=torch.long)
    for b, counts in enumerate(tiles):
        for i, n in enumerate(counts):
            tile_mask[b, i, :n] = 1
    return {
        "input_ids": torch.tensor(rows),
        "pixel_values": torch.zeros(1).expand(batch, n_images, max_tiles, 3, 560, 560),
        "aspect_ratio_mask": tile_mask,
        "cross_attention_mask": torch.from_numpy(cross),
    }


def test_real_config_one_image_of_four_tiles():
    config = real_config()
    inputs = processor_inputs([[IMG, BOS, 791, 2217]], [[4]])
    layout = MllamaAdapter().layout(config, inputs["input_ids"], inputs)
    per_tile = (560 // 14) ** 2 + 1  # 1601: CLS + 40x40, the model's vision_model.num_patches
    assert layout.prefill_length == 1 * 4 * per_tile  # the cross-attention cache length
    assert layout.grids == ((Grid(0, 40, 40), Grid(1600, 40, 40), Grid(3200, 40, 40), Grid(4800, 40, 40)),)
    expected = torch.cat([t * per_tile + 1 + torch.arange(1600) for t in range(4)])  # CLS of each tile skipped
    assert torch.equal(layout.positions[0], expected) and layout.valid.all()


def test_real_config_hooks_the_cross_attention_layers_only():
    adapter = MllamaAdapter()
    model = types.SimpleNamespace(config=real_config())
    assert adapter.hookable_layers(model, []) == [3, 8, 13, 18, 23, 28, 33, 38]


def test_rows_with_fewer_images_and_tiles_are_padded():
    # row 0: one 2-tile image (its second image slot and last two tiles are padding); row 1: 3 + 1 tiles
    rows = [[0, IMG, BOS, 10, 11], [IMG, IMG, BOS, 12, 13]]
    inputs = processor_inputs(rows, [[2], [3, 1]])
    layout = MllamaAdapter().layout(real_config(), inputs["input_ids"], inputs)
    assert layout.prefill_length == 2 * 4 * 1601
    assert [len(g) for g in layout.grids] == [2, 4]
    assert layout.valid.sum(-1).tolist() == [2 * 1600, 4 * 1600]
    tiles_of_row_1 = [0, 1, 2, 4]  # image 0 tiles 0..2, image 1 tile 0, as (image * 4 + tile)
    starts = layout.positions[1, ::1600] - 1
    assert (starts // 1601).tolist() == tiles_of_row_1 and (starts % 1601 == 0).all()


def test_interleaved_images_keep_only_what_the_generated_text_sees():
    # the first image's tokens end where the second image begins: generated text sees image 1 only
    rows = [[IMG, BOS, 10, 11, IMG, 12, 13]]
    inputs = processor_inputs(rows, [[1, 2]])
    layout = MllamaAdapter().layout(real_config(), inputs["input_ids"], inputs)
    assert len(layout.grids[0]) == 2
    assert (layout.positions[0, ::1600] - 1).tolist() == [4 * 1601, 5 * 1601]


def test_precomputed_cross_attention_states_give_the_same_layout():
    model = _model("mllama", "eager")
    inputs = tiny_inputs(model, 2)
    with torch.no_grad():
        vision = model.model.vision_model(
            inputs["pixel_values"], inputs["aspect_ratio_ids"], inputs["aspect_ratio_mask"]
        ).last_hidden_state
        states = model.model.multi_modal_projector(vision)
    states = states.reshape(-1, vision.shape[-2], model.config.text_config.hidden_size)
    adapter = MllamaAdapter()
    expected = adapter.layout(model.config, inputs["input_ids"], inputs)
    precomputed = {k: v for k, v in inputs.items() if k != "pixel_values"} | {"cross_attention_states": states}
    got = adapter.layout(model.config, inputs["input_ids"], precomputed)
    assert torch.equal(got.positions, expected.positions) and torch.equal(got.valid, expected.valid)
    assert got.grids == expected.grids and got.prefill_length == expected.prefill_length


def test_guard_hooks_the_cross_attention_modules():
    model = _model("mllama", "sdpa")
    run = adapt_hooks.guard(model)
    assert run.layers == [1, 3] and run.n_layers == 4
    assert all(isinstance(m, MllamaTextCrossAttention) for m in run._modules)
    with pytest.raises(ValueError, match=r"hookable layers of mllama: 1, 3; got \[2\]"):
        adapt_hooks.guard(model, layers=[2])


def test_anchor_matches_returned_cross_attentions():
    model = _model("mllama", "eager")
    inputs = tiny_inputs(model, 2)
    k = 3
    with adapt_hooks.guard(model, anchor=Anchor(k=k), monitor=DriftMonitor(steer=False)) as run:
        out = generate(model, inputs, max_new_tokens=8, output_attentions=True, return_dict_in_generate=True)
    layout = run.anchor.layout
    assert [len(g) for g in layout.grids] == [4, 3]  # a 2x2-tile image; a 1x2- and a 1x1-tile image
    # out.attentions[t][layer]: decode step t, [B, H, 1, cross keys] on the cross-attention layers
    def head_mean(t: int, layer: int) -> torch.Tensor:
        return out.attentions[t][layer][:, :, -1].double().mean(1)

    steps = [
        torch.stack([head_mean(t, i).gather(1, layout.positions) for i in run.layers], 1) * layout.valid[:, None]
        for t in range(1, 8)
    ]
    torch.testing.assert_close(run.anchor.maps.double(), torch.stack(steps[:k]).mean(0), rtol=1e-5, atol=1e-7)
    for t, a in enumerate(steps):
        torch.testing.assert_close(run.monitor.history["visual_mass"][t].double(), a.sum(-1).T, rtol=1e-5, atol=1e-6)
    # what lies outside the image keys is only the CLS tokens: padding tiles and images get no attention
    cls = sum(head_mean(1, i)[:, ::17].sum(-1) for i in run.layers) / 2
    torch.testing.assert_close(steps[0].sum(-1).mean(1) + cls, torch.ones(2, dtype=torch.float64))
