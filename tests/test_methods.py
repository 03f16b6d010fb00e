"""The method protocol: guard(model) still means ADAPT with the paper's defaults, methods run in
list order, an AttentionStep's edits compose as their formulas say, settings are checked at
construction, methods stay off in training mode, and no decode-step hook syncs with the host."""

from __future__ import annotations

import math

import pytest
import torch
from transformers.modeling_utils import AttentionInterface

import adapt_hooks
from adapt_hooks import ADAPT, PAI, VCD, AttentionStep, DriftMonitor, Method
from adapt_hooks.methods.adapt import Blend, LogPrior, Redistribute
from adapt_hooks.tiny import tiny_inputs

from .conftest import _model, generate
from .references import forbid_host_reads
from .test_lifecycle import snapshot

LOGITS = dict(output_logits=True, return_dict_in_generate=True)


def _history_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], equal_nan=True, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("family", ["llava", "qwen2_vl", "mllama"])
def test_guard_without_methods_is_adapt_with_the_paper_defaults(family):
    model = _model(family, "sdpa")
    inputs = tiny_inputs(model, 2)
    with adapt_hooks.guard(model) as default:
        expected = generate(model, inputs, **LOGITS)
    assert default.methods == [] or repr(default.methods) == "[ADAPT(tau=0.6, alpha=0.5, steering='logprior', eps=1e-06)]"
    with adapt_hooks.guard(model, methods=[ADAPT()]) as explicit:
        got = generate(model, inputs, **LOGITS)
    assert torch.equal(got.sequences, expected.sequences)
    _history_equal(explicit.monitor.history, default.monitor.history)
    with adapt_hooks.guard(model, monitor=DriftMonitor(tau=1e9, alpha=2.0)) as legacy:
        steered = generate(model, inputs)
    with adapt_hooks.guard(model, methods=[ADAPT(tau=1e9, alpha=2.0)]) as unit:
        assert torch.equal(generate(model, inputs), steered)
    assert legacy.monitor.intervention_rate == unit.monitor.intervention_rate == 1.0


def test_an_empty_method_list_observes_only(llava):
    inputs = tiny_inputs(llava, 2)
    expected = generate(llava, inputs)
    with adapt_hooks.guard(llava, monitor=DriftMonitor(tau=1e9), methods=[]) as run:
        assert torch.equal(generate(llava, inputs), expected)
    assert run.monitor.history["amc"][run.anchor.k :].isfinite().all() and run.monitor.intervention_rate == 0.0


def test_adapt_builds_the_unit_of_its_steering_mode():
    units = {"logprior": LogPrior, "blend": Blend, "redistribute": Redistribute}
    for mode, unit in units.items():
        method = ADAPT(0.7, 1.5, steering=mode)
        assert type(method) is unit and isinstance(method, ADAPT) and method.mode == mode
        assert (method.tau, method.alpha) == (0.7, 1.5) and repr(method).startswith("ADAPT(tau=0.7")
    assert Blend.needs_anchor_maps and not LogPrior.needs_anchor_maps


@pytest.mark.parametrize("bad, message", [
    (dict(tau=-1.0), r"ADAPT\(tau=...\) must be >= 0"), (dict(alpha=float("nan")), r"ADAPT\(alpha=...\)"),
    (dict(eps=0.0), r"ADAPT\(eps=...\) must be > 0"), (dict(steering="nudge"), r"steering=...\) must be one of"),
    (dict(gate="hhi"), r"ADAPT\(gate=...\) must be one of"),
])  # fmt: skip
def test_bad_adapt_settings_are_refused_at_construction(bad, message):
    with pytest.raises(ValueError, match=message):
        ADAPT(**bad)


@pytest.mark.parametrize("steering", ["logprior", "blend"])
def test_the_mass_gate_steers_where_the_image_lost_mass_since_the_anchor_phase(llava, steering):
    """gate="mass": the steered cells are those whose visual mass over the layer's anchor-phase
    mean (both from the monitor's history) is below tau; the AMC score plays no part."""
    inputs = tiny_inputs(llava, batch=2)
    k = 3
    with adapt_hooks.guard(llava, anchor=adapt_hooks.Anchor(k=k), monitor=DriftMonitor(steer=False)) as observed:
        generate(llava, inputs, max_new_tokens=12)
    mass = observed.monitor.history["visual_mass"]
    tau = float((mass[k:] / mass[:k].mean(0, keepdim=True)).median())  # a threshold that gates about half
    method = ADAPT(tau=tau, alpha=1.0, steering=steering, gate="mass")
    assert method.needs_anchor_maps and "gate='mass'" in repr(method) and not ADAPT().needs_anchor_maps
    with adapt_hooks.guard(llava, anchor=adapt_hooks.Anchor(k=k), monitor=DriftMonitor(steer=False), methods=[method]) as run:
        generate(llava, inputs, max_new_tokens=12)
    history = run.monitor.history
    mass = history["visual_mass"]
    expected = mass[k:] / mass[:k].mean(0, keepdim=True) < tau
    assert torch.equal(history["steered"][k:].bool(), expected)
    assert 0 < expected.float().mean() < 1  # some cells gated, some not: the test can tell


def test_methods_are_checked_when_the_guard_is_built(llava):
    with pytest.raises(TypeError, match="methods= must list adapt_hooks methods.*got str"):
        adapt_hooks.guard(llava, methods=["vcd"])
    pai = PAI()
    with pytest.raises(ValueError, match="the same method object twice"):
        adapt_hooks.guard(llava, methods=[pai, pai])


def test_methods_run_in_list_order(llava):
    """ADAPT then PAI amplifies the log-prior-steered logits; PAI then ADAPT steers the amplified ones:
    the two orders differ, and each equals its own composition of the formulas."""
    inputs = tiny_inputs(llava, 1)
    runs = {}
    for order in ("adapt-pai", "pai-adapt"):
        adapt, pai = ADAPT(tau=1e9, alpha=2.0), PAI(alpha=1.0)
        methods = [adapt, pai] if order == "adapt-pai" else [pai, adapt]
        with adapt_hooks.guard(llava, methods=methods):
            runs[order] = generate(llava, inputs, **LOGITS)
    k = adapt_hooks.Anchor().k
    assert (runs["adapt-pai"].logits[k + 1] - runs["pai-adapt"].logits[k + 1]).abs().max() > 1e-4


def _step(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 2, 2, 9, generator=g, dtype=torch.float64).float()
    positions, valid = torch.tensor([[2, 3, 4], [5, 6, 0]]), torch.tensor([[True] * 3, [True, True, False]])
    probs = torch.softmax(logits, -1)
    total = probs.flatten(1, 2).sum(1).gather(1, positions) * valid
    return AttentionStep(0, 0, logits.clone(), probs.clone(), positions, valid, total, None), logits.double()


def test_attention_step_edits_compose_as_their_formulas():
    factor = torch.rand(2, 1, 1, 6, generator=torch.Generator().manual_seed(1)).add(0.5)
    step, logits = _step()
    assert step.result() is None  # no edit: the model's kernel
    step.scale_prefill(factor.clone())
    shifted = logits.clone()
    shifted[..., :6] += factor.double().log()
    torch.testing.assert_close(step.probs.double(), torch.softmax(shifted, -1))
    # a logit edit after the product sees its logits; amplify key 7 by 2
    edited = step.logits.clone()
    torch.testing.assert_close(edited.double(), shifted, rtol=1e-6, atol=1e-6)
    edited[..., 7] *= 2
    step.set_logits(edited)
    shifted[..., 7] *= 2
    torch.testing.assert_close(step.result().double(), torch.softmax(shifted, -1), rtol=1e-6, atol=1e-6)
    # a product after a logit edit folds into the logits; a probability edit then a logit read gives log p
    step.scale_prefill(factor.clone())
    shifted[..., :6] += factor.double().log()
    torch.testing.assert_close(step.probs.double(), torch.softmax(shifted, -1), rtol=1e-6, atol=1e-6)
    uniform = torch.full_like(step.probs, 1 / 9)
    step.set_probs(uniform)
    torch.testing.assert_close(step.logits, uniform.log())
    assert step.edited and step.attention.shape == (2, 3)


def test_attention_is_the_head_mean_of_the_unedited_step():
    step, logits = _step(2)
    before = step.attention.clone()
    step.set_probs(torch.full_like(step.probs, 1 / 9))
    expected = torch.softmax(logits, -1).mean((1, 2)).gather(1, step.positions) * step.valid
    torch.testing.assert_close(before.double(), expected)
    torch.testing.assert_close(step.attention, before)


def test_training_mode_leaves_every_method_off_unless_asked(llava):
    inputs = tiny_inputs(llava, 2)
    llava.train()
    try:
        with torch.no_grad():
            plain = llava(**inputs).logits
            with adapt_hooks.guard(llava, methods=[PAI(alpha=3.0), VCD()]):
                assert torch.equal(llava(**inputs).logits, plain)  # no contrast rows, no edit
            monitor = DriftMonitor(steer_in_training=True)
            with adapt_hooks.guard(llava, monitor=monitor, methods=[VCD(alpha=2.0)]):
                steered = llava(**inputs).logits
        assert steered.shape == plain.shape and not torch.allclose(steered, plain)
    finally:
        llava.eval()


def test_a_contrast_method_cannot_nest_with_another_guard(llava):
    before = snapshot(llava)
    with adapt_hooks.guard(llava):
        with pytest.raises(ValueError, match="cannot be nested"):
            with adapt_hooks.guard(llava, methods=[VCD()]):
                pass
    with adapt_hooks.guard(llava, methods=[PAI(cfg_gamma=1.1)]):
        with pytest.raises(ValueError, match="cannot be nested"):
            with adapt_hooks.guard(llava):
                pass
    assert snapshot(llava) == before


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_decode_step_hooks_never_sync_with_the_host(family, monkeypatch):
    """The forward hooks of a decode step (contrast rows added and cut, next-token edits) and the
    attention function run without reading a tensor's value on the host."""
    model = _model(family, "sdpa")
    inputs = tiny_inputs(model, 2)
    in_decode = [False]


    methods = [ADAPT(tau=0.9), PAI(alpha=0.5, cfg_gamma=1.1), VCD()]
    monitor = DriftMonitor(risk=adapt_hooks.RiskModel(torch.ones(len(adapt_hooks.risk.FEATURES)), -1.0))  # the risk too
    with adapt_hooks.guard(model, monitor=monitor, methods=methods) as run:
        interceptor = AttentionInterface._global_mapping[run._name]
        on_forward, on_output = run._on_forward, run._on_output

        def watched(function, decode_only):
            def call(*args, **kwargs):
                in_decode[0] = not decode_only or run._step > 0
                try:
                    return function(*args, **kwargs)
                finally:
                    in_decode[0] = False

            return call

        def attention(module, query, *args, **kwargs):
            function = watched(interceptor, decode_only=False) if query.shape[2] == 1 else interceptor
            return function(module, query, *args, **kwargs)

        def pre_hook(module, args, kwargs):
            cache = adapt_hooks.compat.forward_cache(kwargs)
            decode = cache is not None and cache.get_seq_length() > 0
            return watched(on_forward, decode_only=False)(module, args, kwargs) if decode else on_forward(module, args, kwargs)

        monkeypatch.setattr(run, "_on_forward", pre_hook)
        monkeypatch.setattr(run, "_on_output", watched(on_output, decode_only=True))
        AttentionInterface._global_mapping[run._name] = attention
        forbid_host_reads(monkeypatch, in_decode)
        out = generate(model, inputs, max_new_tokens=8)
        monkeypatch.undo()
    assert out.shape[1] == inputs["input_ids"].shape[1] + 8 and run.decode_steps == 7
    assert run.monitor.risk.shape == (7, 2)


def test_contrast_rows_keep_the_state_bounded(llava):
    """The contrast rows double the cache's rows, not its growth; the methods' state stays flat."""
    inputs = tiny_inputs(llava, 2)
    sizes = []
    for new_tokens in (8, 24):
        with adapt_hooks.guard(llava, monitor=DriftMonitor(history=False), methods=[VCD(), PAI(cfg_gamma=1.1)]) as run:
            out = generate(llava, inputs, max_new_tokens=new_tokens, return_dict_in_generate=True)
        cache = adapt_hooks.compat.output_cache(out)
        assert cache.layers[0].keys.shape[0] == 3 * 2  # the user's rows and one copy per contrast method
        assert cache.get_seq_length() == inputs["input_ids"].shape[1] + new_tokens - 1
        sizes.append(sum(t.numel() for m in run.methods for t in m.state_tensors()) + sum(t.numel() for t in run.monitor._state_tensors()))
    assert sizes[0] == sizes[1]


def test_a_method_subclass_edits_the_next_token_logits(llava):
    """The smallest method: a logits edit, no attention edit, no contrast stream."""

    class Forbid(Method):
        name = "forbid"
        edits_logits = True

        def __init__(self, token: int) -> None:
            self.token = token

        def next_token(self, logits, contrast):
            return logits.index_fill(-1, torch.tensor([self.token]), -math.inf)

    inputs = tiny_inputs(llava, 2)
    plain = generate(llava, inputs)
    banned = int(plain[0, -1])
    with adapt_hooks.guard(llava, methods=[Forbid(banned)]):
        out = generate(llava, inputs)
    assert not out[:, inputs["input_ids"].shape[1] :].eq(banned).any()
