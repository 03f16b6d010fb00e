"""The post-softmax steering modes ("blend", "redistribute") against explicit per-head float64
re-computations, and on real guarded generations."""

from __future__ import annotations

import pytest
import torch

import adapt_hooks
from adapt_hooks import DriftMonitor
from adapt_hooks.methods.adapt import blend, blend_gain, redistribute
from adapt_hooks.tiny import tiny_inputs

from .conftest import _model, generate

B, HKV, G, KV = 2, 2, 2, 9
POSITIONS = torch.tensor([[2, 3, 4, 5], [4, 5, 6, 0]])
VALID = torch.tensor([[True] * 4, [True] * 3 + [False]])


def _probs(seed=0):
    logits = torch.randn(B, HKV, G, KV, generator=torch.Generator().manual_seed(seed))
    return torch.softmax(logits, -1)


def test_blend_matches_per_head_formula():
    probs = _probs()
    target = torch.tensor([[0.7, 0.1, 0.1, 0.1], [0.2, 0.3, 0.5, 0.0]])
    gain = torch.tensor([0.3, 0.0])
    got = blend(probs, POSITIONS, VALID, target, gain)
    expected = probs.double().clone()
    for b in range(B):
        keys = POSITIONS[b][VALID[b]].tolist()
        for h in range(HKV):
            for g in range(G):
                a = probs[b, h, g, keys].double()
                mass = a.sum()
                expected[b, h, g, keys] = (1 - gain[b]) * a + gain[b] * mass * target[b, : len(keys)].double()
    torch.testing.assert_close(got.double(), expected)
    torch.testing.assert_close(got.sum(-1), torch.ones(B, HKV, G))
    assert torch.equal(got[1], probs[1])  # gain 0: row untouched


def test_blend_gain_formula():
    hhi, anchor = torch.tensor([0.05, 0.2, 0.5]), torch.tensor([0.1, 0.1, 0.1])
    torch.testing.assert_close(blend_gain(hhi, anchor), torch.tensor([0.2, 0.0, 0.0]))


def test_redistribute_matches_per_head_formula():
    probs = _probs(1)
    keep = torch.tensor([[True, False, True, False], [True, True, True, True]])
    got = redistribute(probs, POSITIONS, VALID, keep)
    expected = probs.double().clone()
    for b in range(B):
        for h in range(HKV):
            for g in range(G):
                keys = [p for p, v in zip(POSITIONS[b].tolist(), VALID[b]) if v]
                kept = [p for p, v, k in zip(POSITIONS[b].tolist(), VALID[b], keep[b]) if v and k]
                removed = sum(probs[b, h, g, p].double() for p in keys if p not in kept)
                total = sum(probs[b, h, g, p].double() for p in kept)
                for p in keys:
                    expected[b, h, g, p] = probs[b, h, g, p] + removed * probs[b, h, g, p] / total if p in kept else 0.0
    torch.testing.assert_close(got.double(), expected)
    torch.testing.assert_close(got.sum(-1), torch.ones(B, HKV, G))
    assert torch.equal(got[1], probs[1])  # all kept: untouched


@pytest.mark.parametrize("mode", ["blend", "redistribute"])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_post_softmax_modes_on_a_model(mode, attn):
    model = _model("llava", attn)
    inputs = tiny_inputs(model, 2)
    kwargs = dict(output_logits=True, return_dict_in_generate=True)
    plain = generate(model, inputs, **kwargs)
    with adapt_hooks.guard(model, monitor=DriftMonitor(tau=0.0, steering=mode)) as closed:
        same = generate(model, inputs, **kwargs)
    with adapt_hooks.guard(model, monitor=DriftMonitor(tau=1e9, steering=mode)) as run:
        steered = generate(model, inputs, **kwargs)
    assert closed.monitor.intervention_rate == 0.0 and run.monitor.intervention_rate == 1.0
    assert torch.equal(same.sequences, plain.sequences)
    for a, b in zip(same.logits, plain.logits):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-4)
    if mode == "redistribute":  # blend only acts once HHI fell below the anchor's, which a random model may not do
        k = run.anchor.k
        assert (steered.logits[k + 1] - plain.logits[k + 1]).abs().max() > 1e-4


def test_redistribute_keeps_the_refined_top_of_the_current_map():
    model = _model("llava", "eager")
    inputs = tiny_inputs(model, 1)
    with adapt_hooks.guard(model, monitor=DriftMonitor(tau=1e9, steering="redistribute")) as run:
        out = generate(model, inputs, output_attentions=True, return_dict_in_generate=True)
    pos = run.anchor.layout.positions[0]
    step = out.attentions[-1]  # last decode step: steered on every layer
    for layer in range(4):
        image = step[layer][0, :, -1, pos]  # [H, N] after steering
        zeroed = (image == 0).all(0)
        assert 0.3 < zeroed.float().mean() < 0.5  # the 40th percentile cut, up to ties and filtering
        assert torch.allclose(step[layer].sum(-1), torch.ones(()))
