"""Gemma 4: grids from the real image processor's ``image_position_ids``, the vision pooler's
row-major order, images repeated per image for beams (transformers before 5.23), and the
KV-shared full-attention layers being hooked and steered."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformers.models.gemma4.image_processing_pil_gemma4 import Gemma4ImageProcessorPil

import adapt_hooks
from adapt_hooks import DriftMonitor
from adapt_hooks.adapters.gemma4 import Gemma4Adapter
from adapt_hooks.tiny import gemma4 as tiny_gemma4
from adapt_hooks.tiny import tiny_inputs

from .conftest import _model, generate


def test_a_wide_photo_is_a_wide_grid_of_the_processors_soft_tokens():
    processed = Gemma4ImageProcessorPil()([Image.fromarray(np.zeros((300, 500, 3), np.uint8))] * 2, return_tensors="pt")
    config = _model("gemma4", "sdpa").config
    config.vision_config.pooling_kernel_size = 3  # the processor's (the checkpoints') pooling
    try:
        grids = Gemma4Adapter().image_grids(config, processed["image_position_ids"])
    finally:
        config.vision_config.pooling_kernel_size = tiny_gemma4.POOLING
    assert grids == [(12, 21)] * 2  # 36 x 63 patches of 16 px, pooled 3x3
    assert [h * w for h, w in grids] == processed["num_soft_tokens_per_image"].tolist()


def test_the_pooler_lays_an_images_soft_tokens_out_row_major():
    pooler = _model("gemma4", "sdpa").model.vision_tower.pooler
    _, positions = tiny_gemma4._image(4, 8, merged=False, generator=torch.Generator())
    valid = (positions != -1).all(-1, keepdim=True)
    yx = positions.flip(-1).float() * valid  # each patch's (y, x), padding zero
    pooled, kept = pooler._avg_pool_by_positions(yx[None], positions[None], tiny_gemma4.MAX_SOFT_TOKENS)
    centres = pooled[0][kept[0]]
    grid = Gemma4Adapter().image_grids(_model("gemma4", "sdpa").config, positions[None])
    assert grid == [(2, 4)]
    expected = torch.tensor([[2 * r + 0.5, 2 * c + 0.5] for r in range(2) for c in range(4)])
    assert torch.equal(centres, expected)


def test_images_repeated_one_by_one_for_beams_still_get_their_grids():
    model = _model("gemma4", "sdpa")
    inputs = tiny_inputs(model, 2)
    positions = inputs["image_position_ids"]
    expanded = {
        "input_ids": inputs["input_ids"].repeat_interleave(2, 0),
        "image_position_ids": positions.repeat_interleave(2, 0),  # [A, A, B1, B1, B2, B2], not [A, A, B1, B2, B1, B2]
    }
    layout = Gemma4Adapter().layout(model.config, expanded["input_ids"], expanded)
    assert layout.grid_shapes == (((4, 3),), ((4, 3),), ((2, 4), (3, 3)), ((2, 4), (3, 3)))


def test_image_tokens_without_image_position_ids_are_refused():
    model = _model("gemma4", "sdpa")
    inputs = tiny_inputs(model, 1)
    with pytest.raises(ValueError, match="no image_position_ids"):
        Gemma4Adapter().layout(model.config, inputs["input_ids"], {})


@pytest.mark.parametrize("family", ["gemma4", "gemma4_unified"])
def test_a_kv_shared_full_attention_layer_is_hooked_and_steered(family):
    model = _model(family, "sdpa")
    decoder = model.get_decoder()
    shared = [i for i, layer in enumerate(decoder.layers) if layer.self_attn.is_kv_shared_layer]
    assert shared == [2, 3]
    inputs = tiny_inputs(model, 2)
    expected = generate(model, inputs)
    with adapt_hooks.guard(model, monitor=DriftMonitor(steer=False)) as observed:
        assert generate(model, inputs).equal(expected)
    assert observed.layers == [1, 3]  # the full-attention layers; 3 reads layer 1's keys
    assert observed.monitor.history["amc"][observed.anchor.recording_steps :, 1].isfinite().all()
    scores = lambda: torch.stack(generate(model, inputs, output_scores=True, return_dict_in_generate=True).scores)  # noqa: E731
    plain = scores()
    with adapt_hooks.guard(model, layers=[3], monitor=DriftMonitor(tau=1e9)) as steered:
        got = scores()
    assert steered.monitor.intervention_rate == 1.0
    assert (got - plain).abs().max() > 1e-3  # steering layer 3 alone moves the logits
