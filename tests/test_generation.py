"""guard() on real generate() calls of every family: the safety net (observe-only is exact),
the gate (fires with high tau, never with tau = 0), state hygiene between calls."""

from __future__ import annotations

import pytest
import torch

import adapt_hooks
from adapt_hooks import Anchor, DriftMonitor
from adapt_hooks.tiny import tiny_inputs

from .conftest import generate


@pytest.mark.parametrize("batch", [1, 2])
def test_observe_only_is_bit_identical(model, batch):
    inputs = tiny_inputs(model, batch)
    expected = generate(model, inputs)
    with adapt_hooks.guard(model, monitor=DriftMonitor(steer=False)) as run:
        got = generate(model, inputs)
    assert torch.equal(got, expected)
    # the guard really observed: an anchor exists and every step was recorded
    assert run.anchor.weights.shape == (batch, run.anchor.layout.positions.shape[1])
    assert run.monitor.history["visual_mass"].shape == (9, len(run.layers), batch)
    assert run.monitor.intervention_rate == 0.0


def test_observe_only_reads_the_probabilities_an_eager_kernel_returns(model, monkeypatch):
    """Observing alone takes the eager kernel's own attention weights (no second product of the
    query with the keys) and records what recomputing them from the query and keys records."""
    from adapt_hooks import signals

    inputs = tiny_inputs(model, 2)
    with adapt_hooks.guard(model, monitor=DriftMonitor(tau=0.0)) as recomputed:  # a method is active: recomputed
        generate(model, inputs)
    products = []
    original = signals.attention_logits
    monkeypatch.setattr(signals, "attention_logits", lambda *a, **k: products.append(1) or original(*a, **k))
    with adapt_hooks.guard(model, monitor=DriftMonitor(steer=False)) as observed:
        generate(model, inputs)
    assert (len(products) == 0) == (model.config._attn_implementation == "eager")
    for name in ("amc", "visual_mass", "hhi", "change_rate"):
        torch.testing.assert_close(observed.monitor.history[name], recomputed.monitor.history[name], atol=1e-5, rtol=1e-4,
                                   equal_nan=True, msg=name)  # fmt: skip
    torch.testing.assert_close(observed.anchor.weights, recomputed.anchor.weights, atol=1e-3, rtol=0)  # min-max scaled


@pytest.mark.parametrize("batch", [1, 2])
def test_high_tau_steers_and_changes_logits(model, batch):
    inputs = tiny_inputs(model, batch)
    plain = generate(model, inputs, output_logits=True, return_dict_in_generate=True)
    with adapt_hooks.guard(model, monitor=DriftMonitor(tau=1e9, alpha=2.0)) as run:
        steered = generate(model, inputs, output_logits=True, return_dict_in_generate=True)
    k = run.anchor.k
    assert run.monitor.intervention_rate == 1.0
    assert run.monitor.history["steered"][k:].eq(1).all()
    assert run.monitor.history["steered"][:k].eq(0).all()
    # steering starts at decode step k + 1, which produces token k + 2: logits before it are unchanged
    for t in range(k + 1):
        torch.testing.assert_close(steered.logits[t], plain.logits[t], rtol=0, atol=1e-5)
    assert (steered.logits[k + 1] - plain.logits[k + 1]).abs().max() > 1e-3


def test_tau_zero_never_steers_and_logits_match(model):
    inputs = tiny_inputs(model, 2)
    plain = generate(model, inputs, output_logits=True, return_dict_in_generate=True)
    with adapt_hooks.guard(model, monitor=DriftMonitor(tau=0.0)) as run:
        guarded = generate(model, inputs, output_logits=True, return_dict_in_generate=True)
    assert run.monitor.intervention_rate == 0.0
    assert run.monitor.history["steered"].eq(0).all()
    assert torch.equal(guarded.sequences, plain.sequences)
    for a, b in zip(guarded.logits, plain.logits):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-4)


def test_history_signals_are_consistent(model):
    inputs = tiny_inputs(model, 2)
    with adapt_hooks.guard(model, anchor=Anchor(k=3), monitor=DriftMonitor(tau=0.9)) as run:
        generate(model, inputs, max_new_tokens=12)
    h = run.monitor.history
    assert set(h) == {"amc", "visual_mass", "hhi", "change_rate", "steered"}
    assert all(v.shape == (11, len(run.layers), 2) for v in h.values())
    assert h["amc"][:3].isnan().all() and h["amc"][3:].isfinite().all()
    assert ((h["visual_mass"] > 0) & (h["visual_mass"] <= 1 + 1e-6)).all()
    n = run.anchor.layout.valid.sum(-1)  # HHI lies between 1/N and 1
    assert (h["hhi"] >= 1 / n - 1e-6).all() and (h["hhi"] <= 1 + 1e-6).all()
    assert h["change_rate"][0].eq(0).all() and ((h["change_rate"] >= 0) & (h["change_rate"] <= 1)).all()
    steered = h["steered"][3:]
    assert run.monitor.intervention_rate == pytest.approx(steered.mean().item())
    assert torch.equal(steered.bool(), h["amc"][3:] < 0.9)


def test_anchor_weights_are_refined_maps_per_grid(model):
    inputs = tiny_inputs(model, 2)
    with adapt_hooks.guard(model, monitor=DriftMonitor(steer=False)) as run:
        generate(model, inputs)
    anchor = run.anchor
    w = anchor.weights
    assert w.dtype == torch.float32 and w.min() >= 0 and w.max() <= 1
    for b, grids in enumerate(anchor.layout.grids):
        assert grids and sum(g.size for g in grids) == int(anchor.layout.valid[b].sum())
        for i, g in enumerate(grids):
            grid = anchor.grid(b, i)
            assert grid.shape == (g.height, g.width)
            assert grid.max() == 1.0  # refine ends with a min-max, per grid
    assert anchor.layer_weights.shape == (2, len(run.layers))
    torch.testing.assert_close(anchor.layer_weights.sum(-1), torch.ones(2))


def test_state_does_not_leak_between_generate_calls(model):
    first, second = tiny_inputs(model, 1, seed=1), tiny_inputs(model, 1, seed=2)
    with adapt_hooks.guard(model, monitor=DriftMonitor(tau=0.9)) as run:
        generate(model, first)
        generate(model, second, max_new_tokens=8)
        reused = run.anchor.weights.clone(), run.monitor.history["amc"].clone()
    with adapt_hooks.guard(model, monitor=DriftMonitor(tau=0.9)) as fresh:
        generate(model, second, max_new_tokens=8)
    torch.testing.assert_close(reused[0], fresh.anchor.weights)
    torch.testing.assert_close(reused[1], fresh.monitor.history["amc"], equal_nan=True)


def test_layers_restricts_hooking(model):
    inputs = tiny_inputs(model, 1)
    chosen = adapt_hooks.guard(model).layers[-2:]
    with adapt_hooks.guard(model, layers=chosen, monitor=DriftMonitor(tau=1e9)) as run:
        generate(model, inputs)
    assert run.layers == chosen
    assert run.monitor.history["amc"].shape[1] == 2
    assert run.anchor.maps.shape[1] == 2


def test_text_only_prompt_is_a_noop_with_one_warning(model):
    inputs = tiny_inputs(model, 2, images=False)
    expected = generate(model, inputs)
    with pytest.warns(UserWarning, match="no image tokens") as record:
        with adapt_hooks.guard(model, monitor=DriftMonitor(tau=1e9)) as run:
            a = generate(model, inputs)
            b = generate(model, inputs)
    assert len([w for w in record if "no image tokens" in str(w.message)]) == 1
    assert torch.equal(a, expected) and torch.equal(b, expected)
    assert run.anchor.weights is None and run.monitor.history == {}


def test_fewer_than_k_tokens_gives_no_anchor(model):
    inputs = tiny_inputs(model, 1)
    expected = generate(model, inputs, max_new_tokens=4)
    with adapt_hooks.guard(model, monitor=DriftMonitor(tau=1e9)) as run:
        got = generate(model, inputs, max_new_tokens=4)  # 3 decode steps < k = 5
    assert torch.equal(got, expected)
    assert run.anchor.weights is None and run.monitor.intervention_rate == 0.0
