"""Observation and steering maths against independent float64 re-computations: the signals of
one decode step, the log-prior bias folded into every mask format, and the steered attention of
a real guarded model."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.modeling_utils import AttentionInterface

import adapt_hooks
from adapt_hooks import DriftMonitor, decode, signals
from adapt_hooks.hooks.interceptor import Interceptor
from adapt_hooks.layout import ImageLayout
from adapt_hooks.methods.adapt import logprior
from adapt_hooks.methods.base import AttentionStep
from adapt_hooks.tiny import tiny_inputs

from .conftest import generate

B, H, HKV, KV, D, P = 2, 4, 2, 12, 8, 10
POSITIONS = torch.tensor([[3, 4, 5, 6, 7], [5, 6, 7, 8, 0]])
VALID = torch.tensor([[True] * 5, [True] * 4 + [False]])


def _qk(seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, 1, D, generator=g)
    k = torch.randn(B, HKV, KV, D, generator=g)
    v = torch.randn(B, HKV, KV, D, generator=g)
    return q, k, v


def _logits64(q, k, scale):
    k = k.double().repeat_interleave(H // HKV, dim=1)
    return (q.double() @ k.transpose(-1, -2)) * scale  # [B, H, 1, KV]


def _masks():
    """The same padding (row 1 has two left-pad keys) in the three formats transformers uses."""
    attend = torch.ones(B, 1, 1, KV, dtype=torch.bool)
    attend[1, ..., :2] = False
    additive = torch.zeros(B, 1, 1, KV).masked_fill(~attend, torch.finfo(torch.float32).min)
    return {"bool": attend, "float": additive, "none": None}, attend


@pytest.mark.parametrize("fmt", ["bool", "float", "none"])
def test_image_attention_matches_float64_softmax(fmt):
    q, k, _ = _qk()
    masks, attend = _masks()
    mask = masks[fmt]
    got = signals.image_attention(signals.attention_probs(q, k, mask, D**-0.5), POSITIONS, VALID)
    logits = _logits64(q, k, D**-0.5)
    if mask is not None:
        logits = logits.masked_fill(~attend, -math.inf)
    probs = torch.softmax(logits, -1).mean(1)[:, 0]  # [B, KV]
    for b in range(B):
        for n in range(5):
            expected = probs[b, POSITIONS[b, n]] if VALID[b, n] else 0.0
            assert got[b, n].item() == pytest.approx(float(expected), abs=1e-6)


def test_signal_formulas_on_a_hand_case():
    a = torch.tensor([[0.2, 0.2, 0.0, 0.0], [0.1, 0.1, 0.1, 0.1]])
    w = torch.tensor([[1.0, 0.0, 0.5, 0.5], [1.0, 1.0, 0.0, 0.0]])
    ahat = signals.normalise(a)
    torch.testing.assert_close(ahat, torch.tensor([[0.5, 0.5, 0, 0], [0.25] * 4]))
    torch.testing.assert_close(signals.concentration(ahat), torch.tensor([0.5, 0.25]))
    torch.testing.assert_close(signals.change_rate(ahat[:1], ahat[1:]), torch.tensor([0.5]))
    # S_AMC = Σ a² w / (Σ a)²: row 0 = (0.04·1 + 0.04·0) / 0.16, row 1 = (0.01 + 0.01) / 0.16
    torch.testing.assert_close(signals.amc(a, w), torch.tensor([0.25, 0.125]))
    torch.testing.assert_close(signals.amc(3 * a, w), signals.amc(a, w))  # scale-invariant


def _layout():
    return ImageLayout(POSITIONS, VALID, ((), ()), P)


def test_logprior_places_alpha_log_w_at_image_keys():
    w = torch.tensor([[1.0, 0.5, 0.0, 0.25, 1.0], [0.0, 1.0, 0.5, 0.2, 0.9]])
    prior = logprior(w, _layout(), alpha=0.5, eps=1e-6)
    expected = torch.zeros(B, P)
    for b in range(B):
        for n in range(5):
            if VALID[b, n]:
                expected[b, POSITIONS[b, n]] = 0.5 * math.log(w[b, n].item() + 1e-6)
    torch.testing.assert_close(prior, expected)


class _FakeGuard:
    """Stands in for a Guard in the decode branch: fixed positions, the real observation step and
    the log-prior's renormalised product on the rows of a fixed gate."""

    observing = True
    main_rows = None

    def __init__(self, gate, prior):
        self.gate = gate[:, None]
        self.boost = torch.expm1(prior)
        self.seen = []

    def edits(self, slot):
        return True

    def decode_step(self, slot, query, key, attention_mask, scaling, softcap):
        terms = torch.ones(B, 5, 2)
        logits, probs, total, _, normalised, score, _ = decode.observe(
            query, key, attention_mask, scaling, softcap, POSITIONS, VALID, terms
        )
        step = AttentionStep(slot, 0, logits, probs, POSITIONS, VALID, total, score)
        step.scale_prefill((self.boost * self.gate).add(1).view(B, 1, 1, -1))
        self.seen.append(normalised)
        return step.result()


class _Module(nn.Module):
    num_key_value_groups = H // HKV
    is_causal = True
    scaling = D**-0.5


@pytest.mark.parametrize("fmt", ["bool", "float", "none"])
def test_interceptor_steers_logits_exactly_as_the_formula(fmt):
    q, k, v = _qk(1)
    masks, attend = _masks()
    mask = masks[fmt]
    gate = torch.tensor([True, False])  # steer row 0 only
    w = torch.rand(B, 5, generator=torch.Generator().manual_seed(3))
    prior = logprior(w, _layout(), alpha=0.7, eps=1e-6)
    module = _Module()
    fake = _FakeGuard(gate, prior)
    out, _ = Interceptor(fake, sdpa_attention_forward, None, {id(module): 0})(module, q, k, v, mask, scaling=D**-0.5)

    logits = _logits64(q, k, D**-0.5)
    if mask is not None:
        logits = logits.masked_fill(~attend, -math.inf)
    bias = torch.zeros(B, KV, dtype=torch.float64)
    for b in range(B):
        for n in range(5):
            if VALID[b, n] and gate[b]:
                bias[b, POSITIONS[b, n]] = 0.7 * math.log(w[b, n].item() + 1e-6)
    probs = torch.softmax(logits + bias[:, None, None, :], -1)
    expected = (probs @ v.double().repeat_interleave(H // HKV, 1)).transpose(1, 2)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)
    assert len(fake.seen) == 1


def test_interceptor_passes_prefill_and_unhooked_layers_through():
    q, k, v = _qk()
    module, other = _Module(), _Module()
    fake = _FakeGuard(torch.tensor([True, True]), torch.full((B, P), -5.0))
    calls = []

    def base(*args, **kwargs):
        calls.append(args[4])
        return torch.zeros(1), None

    interceptor = Interceptor(fake, base, None, {id(module): 0})
    prefill_q = torch.randn(B, H, 3, D)
    interceptor(module, prefill_q, k, v, "mask", scaling=1.0)
    interceptor(other, q, k, v, "mask", scaling=1.0)
    assert calls == ["mask", "mask"] and fake.seen == []  # original mask object, no observation


def test_guarded_model_steered_attention_matches_formula(llava):
    """Capture q, k and the mask at each decode step of a real eager model, recompute the steered
    attention independently, and compare with what the model actually used."""
    inputs = tiny_inputs(llava, 2)
    captured = []
    with adapt_hooks.guard(llava, monitor=DriftMonitor(tau=1e9, alpha=1.0)) as run:
        interceptor = AttentionInterface._global_mapping[run._name]

        def spy(module, query, key, value, attention_mask, **kwargs):
            out = interceptor(module, query, key, value, attention_mask, **kwargs)
            if query.shape[2] == 1 and module.layer_idx == 1:
                captured.append((query, key, attention_mask, out[1], kwargs["scaling"]))
            return out

        AttentionInterface._global_mapping[run._name] = spy
        out = generate(llava, inputs, max_new_tokens=9, output_attentions=True, return_dict_in_generate=True)
    k = run.anchor.k
    w = run.anchor.weights.double()
    pos, valid = run.anchor.layout.positions, run.anchor.layout.valid
    assert len(captured) == 8
    for step, (q, key, mask, used, scale) in enumerate(captured, start=1):
        logits = (q.double() @ key.double().repeat_interleave(q.shape[1] // key.shape[1], 1).transpose(-1, -2)) * scale
        logits = logits + mask[..., : key.shape[-2]].double()
        plain = torch.softmax(logits, -1)
        if step <= k:  # anchor phase: untouched
            torch.testing.assert_close(used.double(), plain, rtol=1e-5, atol=1e-6)
            continue
        bias = torch.zeros(2, key.shape[-2], dtype=torch.float64)
        bias.scatter_add_(1, pos, torch.log(w + 1e-6) * valid)
        expected = torch.softmax(logits + bias[:, None, None, :], -1)
        torch.testing.assert_close(used.double(), expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(used.sum(-1), torch.ones_like(used.sum(-1)))
        # within the image keys, mass moves toward the anchor: E_â[w] does not decrease
        for probs in (plain, used.double()):
            img = probs[..., 0, :].gather(-1, pos[:, None].expand(-1, probs.shape[1], -1)) * valid[:, None]
            img = img / img.sum(-1, keepdim=True)
            if probs is plain:
                before = (img * w[:, None]).sum(-1)
            else:
                after = (img * w[:, None]).sum(-1)
        assert (after >= before - 1e-9).all() and (after > before).any()
    # output_attentions returns the same steered weights the model used
    torch.testing.assert_close(out.attentions[-1][1], captured[-1][3])
