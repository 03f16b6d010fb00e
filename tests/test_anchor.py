"""The anchor and the drift signals of a real guarded generation, recomputed independently from
the attention weights the model returns (eager, ``output_attentions=True``)."""

from __future__ import annotations

import pytest
import torch

import adapt_hooks
from adapt_hooks import Anchor, DriftMonitor, scoring
from adapt_hooks.tiny import tiny_inputs

from .conftest import _model, generate


def _image_attention(attentions, step, positions, valid):
    """Head-mean attention of decode step ``step`` on each image key: [B, layers, N] float64."""
    per_layer = [a[:, :, -1].double().mean(1).gather(1, positions) * valid for a in attentions[step]]
    return torch.stack(per_layer, 1)


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_anchor_and_signals_match_returned_attentions(family):
    model = _model(family, "eager")
    inputs = tiny_inputs(model, 2)
    k = 3
    with adapt_hooks.guard(model, anchor=Anchor(k=k), monitor=DriftMonitor(steer=False)) as run:
        out = generate(model, inputs, max_new_tokens=10, output_attentions=True, return_dict_in_generate=True)
    layout = run.anchor.layout
    pos, valid = layout.positions, layout.valid
    # out.attentions[0] is the prefill; decode step t is out.attentions[t]
    steps = [_image_attention(out.attentions, t, pos, valid) for t in range(1, 10)]

    maps = torch.stack(steps[:k]).mean(0)
    torch.testing.assert_close(run.anchor.maps.double(), maps, rtol=1e-5, atol=1e-7)

    for b, grids in enumerate(layout.grids):
        (g,) = grids
        grid_maps = maps[b, :, g.offset : g.offset + g.size].reshape(4, g.height, g.width)
        scores = scoring.layer_scores(grid_maps, [0, 1, 2, 3], 4)["combined"]
        lw = scoring.fusion_weights(scores, 0.1)
        expected = scoring.refine(scoring.fuse(grid_maps, lw))
        torch.testing.assert_close(run.anchor.grid(b), expected, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(run.anchor.layer_weights[b], lw, rtol=1e-3, atol=1e-4)

    w = run.anchor.weights.double()
    history = run.monitor.history
    for t, a in enumerate(steps):
        torch.testing.assert_close(history["visual_mass"][t].double(), a.sum(-1).T, rtol=1e-5, atol=1e-6)
        ahat = a / a.sum(-1, keepdim=True)
        torch.testing.assert_close(history["hhi"][t].double(), ahat.square().sum(-1).T, rtol=1e-5, atol=1e-6)
        if t > 0:
            prev = steps[t - 1] / steps[t - 1].sum(-1, keepdim=True)
            change = (ahat - prev).abs().sum(-1) / 2
            torch.testing.assert_close(history["change_rate"][t].double(), change.T, rtol=1e-4, atol=1e-6)
        if t >= k:
            anchor_hat = maps / maps.sum(-1, keepdim=True)
            reference = (anchor_hat.square() * w[:, None]).sum(-1)
            amc = (ahat.square() * w[:, None]).sum(-1) / reference
            torch.testing.assert_close(history["amc"][t].double(), amc.T, rtol=1e-4, atol=1e-6)


def test_raw_amc_when_not_normalised(llava):
    inputs = tiny_inputs(llava, 1)
    with adapt_hooks.guard(llava, monitor=DriftMonitor(steer=False, normalize=None)) as raw:
        generate(llava, inputs)
    with adapt_hooks.guard(llava, monitor=DriftMonitor(steer=False)) as rel:
        generate(llava, inputs)
    k = raw.anchor.k
    maps, w = rel.anchor.maps, rel.anchor.weights
    reference = ((maps / maps.sum(-1, keepdim=True)).square() * w[:, None]).sum(-1).T  # [layers, B]
    torch.testing.assert_close(raw.monitor.history["amc"][k:], rel.monitor.history["amc"][k:] * reference)
    # a raw score is at most max(w) * HHI <= 1/N-ish for spread attention: far below the default tau
    assert raw.monitor.history["amc"][k:].max() < 0.6


def test_anchor_prefers_the_attended_region():
    """Planted attention: a layer map concentrated on a 3x3 patch yields an anchor whose mass is there."""
    grid = torch.full((4, 8, 8), 1e-3)
    grid[:, 2:5, 3:6] = 0.05
    grid = grid + 1e-4 * torch.rand(4, 8, 8, generator=torch.Generator().manual_seed(0))
    lw = scoring.fusion_weights(scoring.layer_scores(grid, [0, 1, 2, 3], 4)["combined"])
    w = scoring.refine(scoring.fuse(grid, lw))
    assert w[2:5, 3:6].min() > 0.5
    inside = w[2:5, 3:6].sum() / w.sum()
    assert inside > 9 / 64 * 2  # more than twice a uniform share
