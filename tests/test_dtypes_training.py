"""Low precision and training: finite signals in fp16/bf16 and in extreme cases (overflowing
logits, fully masked rows, a zero anchor); observe-only by default in training mode, gradients
untouched by observation, gradient checkpointing and VAG-DPO under autocast inside a guard."""

from __future__ import annotations

import pytest
import torch

import adapt_hooks
from adapt_hooks import Anchor, DriftMonitor, VAGDPOLoss, decode, sequence_logps, signals  # noqa: I001
from adapt_hooks.layout import ImageLayout
from adapt_hooks.methods.adapt import logprior
from adapt_hooks.methods.base import AttentionStep
from adapt_hooks.tiny import tiny_inputs, tiny_model

from .conftest import generate
from .test_vagdpo import setup  # noqa: F401 (fixture)

STEER = dict(tau=1e9, alpha=2.0)
LOGITS = dict(output_logits=True, return_dict_in_generate=True)


def _finite_history(history: dict, k: int) -> bool:
    """Every signal finite, except the documented NaN of ``amc`` during the anchor phase."""
    return all(v[k:].isfinite().all() for v in history.values()) and all(
        v.isfinite().all() for name, v in history.items() if name != "amc"
    )


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_half_precision_signals_are_finite(dtype, attn):
    model = tiny_model("llava", attn).to(dtype)
    inputs = tiny_inputs(model, 2)
    inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
    expected = generate(model, inputs)
    with adapt_hooks.guard(model, anchor=Anchor(k=3), monitor=DriftMonitor(steer=False)) as run:
        assert torch.equal(generate(model, inputs), expected)
    assert _finite_history(run.monitor.history, 3) and run.anchor.weights.isfinite().all()
    with adapt_hooks.guard(model, anchor=Anchor(k=3), monitor=DriftMonitor(**STEER)) as run:
        out = generate(model, inputs, **LOGITS)
    assert _finite_history(run.monitor.history, 3) and run.monitor.intervention_rate == 1.0
    assert all(step.isfinite().all() for step in out.logits)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("mask_kind", ["bool", "additive"])
def test_overflowing_logits_masked_rows_and_a_zero_anchor_stay_finite(dtype, mask_kind):
    """Row 0's logits overflow the dtype, row 1 is fully masked, and the anchor is zero."""
    torch.manual_seed(0)
    batch, heads, kv_heads, dim, prefill, n = 2, 4, 2, 8, 12, 6
    query, key = torch.randn(batch, heads, 1, dim), torch.randn(batch, kv_heads, prefill + 3, dim)
    query[0], key[0] = query[0] * 300, key[0] * 300
    query, key = query.to(dtype), key.to(dtype)
    attend = torch.ones(batch, 1, 1, prefill + 3, dtype=torch.bool)
    attend[1] = False
    mask = attend if mask_kind == "bool" else torch.where(attend, 0.0, torch.finfo(dtype).min).to(dtype)
    grid = ImageLayout.single_grid(batch, 2, 3)
    layout = ImageLayout(grid.positions + 2, grid.valid, grid.grids, prefill)
    zero = torch.zeros(batch, n)
    terms = torch.stack((zero, torch.ones_like(zero)), dim=-1)
    boost = torch.expm1(logprior(zero, layout, 0.5, 1e-6))
    probs = signals.attention_probs(query, key, mask, dim**-0.5)
    assert probs.isfinite().all()
    if mask_kind == "bool":
        assert probs[1].eq(0).all()  # a fully masked row attends to nothing (an additive one: uniformly)
    assert signals.image_attention(probs, layout.positions, None).isfinite().all()
    logits, observed, total, mass, normalised, score, hhi = decode.observe(
        query, key, mask, dim**-0.5, None, layout.positions, None, terms
    )
    row = decode.history_row(normalised, None, score, mass, hhi, score < 0.6)
    assert normalised.isfinite().all() and all(t.isfinite().all() for t in row)
    step = AttentionStep(0, 0, logits, observed, layout.positions, None, total, score)
    step.scale_prefill((boost * (score < 0.6)).add(1).view(batch, 1, 1, -1))
    steered_probs = step.result()
    assert steered_probs.isfinite().all() and steered_probs[0].sum(-1).sub(1).abs().max() < 1e-5


def test_a_zero_anchor_on_a_model_keeps_every_signal_finite(llava):
    inputs = tiny_inputs(llava, 2)
    layers = len(adapt_hooks.guard(llava).layers)
    zero = Anchor.from_weights(torch.zeros(8, 8), maps=torch.zeros(1, layers, 64))
    with adapt_hooks.guard(llava, anchor=zero, monitor=DriftMonitor(tau=0.9)) as run:
        out = generate(llava, inputs, **LOGITS)
    assert _finite_history(run.monitor.history, 0)
    assert all(step.isfinite().all() for step in out.logits)


# -- training ---------------------------------------------------------------------------------
def test_training_mode_observes_but_does_not_steer_by_default():
    model = tiny_model("llava", "eager").train()
    inputs = tiny_inputs(model, 2)
    expected = generate(model, inputs, **LOGITS)
    with adapt_hooks.guard(model, monitor=DriftMonitor(**STEER)) as run:
        got = generate(model, inputs, **LOGITS)
    assert torch.equal(got.sequences, expected.sequences)
    for a, b in zip(got.logits, expected.logits):
        assert torch.equal(a, b)  # observe-only: bit-identical
    assert run.monitor.intervention_rate == 0.0 and run.monitor.history["amc"][5:].isfinite().all()
    with adapt_hooks.guard(model, monitor=DriftMonitor(**STEER, steer_in_training=True)) as run:
        steered = generate(model, inputs, **LOGITS)
    assert run.monitor.intervention_rate == 1.0
    assert (steered.logits[-1] - expected.logits[-1]).abs().max() > 1e-3
    model.eval()
    with adapt_hooks.guard(model, monitor=DriftMonitor(**STEER)) as run:
        generate(model, inputs)
    assert run.monitor.intervention_rate == 1.0  # back in eval mode, the same monitor steers


def _decode_loss(model, inputs, steps=7):
    """Prefill without gradients, then ``steps`` teacher-forced decode steps with gradients."""
    with torch.no_grad():
        out = model(**inputs, use_cache=True)
    cache, loss = out.past_key_values, 0.0
    for token in range(steps):
        out = model(input_ids=torch.full((1, 1), 20 + token), past_key_values=cache, use_cache=True)
        loss = loss + out.logits[:, -1].logsumexp(-1).sum()
    return loss


def test_observation_leaves_gradients_unchanged():
    model = tiny_model("llava", "sdpa").train()
    inputs = tiny_inputs(model, 1)
    _decode_loss(model, inputs).backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    with adapt_hooks.guard(model) as run:
        _decode_loss(model, inputs).backward()
    assert run.monitor.history["amc"].shape[0] == 7 and run.monitor.intervention_rate == 0.0
    got = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    assert got.keys() == expected.keys() and all(torch.equal(got[n], expected[n]) for n in got)


def test_gradient_checkpointing_training_step_is_untouched():
    model = tiny_model("llava", "eager").train()
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x
        model.activation_checkpointing_enable({"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    inputs = tiny_inputs(model, 2)
    labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    grads = []
    for guarded in (False, True):
        model.zero_grad(set_to_none=True)
        with adapt_hooks.guard(model, monitor=DriftMonitor(**STEER)) if guarded else torch.enable_grad() as run:
            model(**inputs, labels=labels).loss.backward()
        grads.append(model.lm_head.weight.grad.clone())
    assert torch.equal(grads[0], grads[1])
    assert run.monitor.history == {}  # teacher-forced calls are prefills: nothing to observe


def test_vagdpo_under_autocast_inside_a_guard(setup):  # noqa: F811
    """VAG-DPO loss and gradients under bf16 autocast are the same inside a guard as outside.
    Autocast and checkpointing alone: tests/test_vagdpo.py::test_autocast_and_gradient_checkpointing."""
    _, _, _, batch = setup
    model = tiny_model("llava", "eager").train()
    loss_fn = VAGDPOLoss(beta=0.5)
    results = []
    for guarded in (False, True):
        model.zero_grad(set_to_none=True)
        with adapt_hooks.guard(model) if guarded else torch.enable_grad():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logps = sequence_logps(model, batch)
                with torch.no_grad():
                    ref = sequence_logps(model, batch)
                loss = loss_fn(logps.chosen, logps.rejected, ref.chosen, ref.rejected, logps.chosen_nll)[0]
            loss.backward()
        results.append((loss.detach(), model.lm_head.weight.grad.clone()))
    assert results[0][0].isfinite() and torch.equal(results[0][0], results[1][0])
    assert torch.equal(results[0][1], results[1][1])
