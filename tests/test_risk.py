"""The hallucination risk: its features against the monitor's history and the model's logits,
the logistic model against its formula, saving and refusing, fitting, stopping on risk, and
outputs unchanged while it is computed."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import adapt_hooks
from adapt_hooks import Anchor, DriftMonitor, RiskModel, RiskStopping, fit_risk
from adapt_hooks.risk import FEATURES
from adapt_hooks.risk_fitting import fit_logistic
from adapt_hooks.tiny import tiny_inputs, tiny_model

from .conftest import generate

LOGITS = dict(output_logits=True, return_dict_in_generate=True)


def _guarded(model, inputs, risk, k=3, **kwargs):
    monitor = DriftMonitor(steer=False, risk=risk)
    with adapt_hooks.guard(model, anchor=Anchor(k=k), monitor=monitor) as run:
        out = generate(model, inputs, **kwargs)
    return out, run.monitor


def test_risk_features_are_the_pooled_history_and_the_top_probability(llava):
    inputs, k = tiny_inputs(llava, batch=2), 3
    out, monitor = _guarded(llava, inputs, RiskModel.untrained(), k, max_new_tokens=10, **LOGITS)
    history, features = monitor.history, monitor.risk_features
    steps = history["visual_mass"].shape[0]
    assert features.shape == (steps, 2, len(FEATURES))
    column = {name: features[..., i] for i, name in enumerate(FEATURES)}
    mean = lambda name: history[name].mean(1)  # noqa: E731  [steps, layers, B] -> [steps, B]
    torch.testing.assert_close(column["visual_mass"], mean("visual_mass"))
    torch.testing.assert_close(column["hhi"], mean("hhi"))
    torch.testing.assert_close(column["change_rate"], mean("change_rate"))
    torch.testing.assert_close(column["amc"][k:], mean("amc")[k:])
    assert (column["amc"][:k] == 1).all() and (column["mass_ratio"][:k] == 1).all()
    anchor_mass = history["visual_mass"][:k].mean(0, keepdim=True)
    torch.testing.assert_close(column["mass_ratio"][k:], (history["visual_mass"][k:] / anchor_mass).mean(1))
    top = torch.stack([torch.softmax(l.float(), -1).amax(-1) for l in out.logits[1 : steps + 1]])  # row s: decode step s + 1
    torch.testing.assert_close(column["confidence"], top)
    assert torch.equal(monitor.risk, torch.full((steps, 2), 0.5))  # untrained: sigmoid(0)


def test_the_risk_is_the_logistic_formula_of_its_features(llava):
    inputs = tiny_inputs(llava, batch=2)
    weights, mean, std = torch.tensor([1.0, -2.0, 0.5, 3.0, -1.0, -4.0]), torch.linspace(0, 1, 6), torch.linspace(1, 2, 6)
    risk = RiskModel(weights, 0.3, mean, std)
    _, monitor = _guarded(llava, inputs, risk, max_new_tokens=8)
    x = monitor.risk_features.double()
    expected = torch.sigmoid(((x - mean.double()) / std.double()) @ weights.double() + 0.3)
    torch.testing.assert_close(monitor.risk.double(), expected, rtol=1e-5, atol=1e-6)
    assert monitor.latest_risk.shape == (2,)


def test_computing_the_risk_leaves_every_family_bit_identical(model):
    inputs = tiny_inputs(model, batch=2)
    plain = generate(model, inputs)
    out, monitor = _guarded(model, inputs, RiskModel(torch.ones(len(FEATURES)), -1.0))
    assert torch.equal(out, plain)
    assert monitor.risk.shape == (9, 2) and ((monitor.risk > 0) & (monitor.risk < 1)).all()


def test_generation_stops_where_the_risk_passes_the_threshold(llava):
    inputs = tiny_inputs(llava, batch=2)
    certain = RiskModel(torch.zeros(len(FEATURES)), 10.0)  # risk sigmoid(10) at every step
    monitor = DriftMonitor(steer=False, risk=certain)
    with adapt_hooks.guard(llava, monitor=monitor):
        stopped = generate(llava, inputs, stopping_criteria=[RiskStopping(monitor, 0.9)])
    assert stopped.shape[1] == inputs["input_ids"].shape[1] + 2  # the prefill's token, then the first monitored step's
    with adapt_hooks.guard(llava, monitor=monitor):
        full = generate(llava, inputs, stopping_criteria=[RiskStopping(monitor, 0.99999)])
    assert full.shape[1] == inputs["input_ids"].shape[1] + 10
    with pytest.raises(ValueError, match="risk model"):
        RiskStopping(DriftMonitor(), 0.5)


def test_a_saved_risk_model_loads_and_refuses_another_architecture(tmp_path, llava):
    risk = RiskModel(torch.arange(6.0), 0.25, torch.ones(6), torch.full((6,), 2.0), "llava", 4, {"note": "test"})
    path = tmp_path / "risk.safetensors"
    risk.save(path)
    back = RiskModel.load(path, llava)
    assert torch.equal(back.weights, risk.weights) and back.bias == 0.25 and back.model_type == "llava" and back.meta == {"note": "test"}
    qwen = tiny_model("qwen2_vl", "eager")
    with pytest.raises(ValueError, match="fitted for llava with 4 decoder layers, not for qwen2_vl"):
        RiskModel.load(path, qwen)
    with pytest.raises(ValueError, match="fitted for llava"):
        adapt_hooks.guard(qwen, monitor=DriftMonitor(risk=back))
    wide = RiskModel(torch.ones(6), model_type="llava", n_layers=4, hidden_size=128)  # same type and depth, other width
    with pytest.raises(ValueError, match="with 4 decoder layers of width 128, not for llava with 4 decoder layers of width 32"):
        wide.check(llava)
    with pytest.raises(ValueError, match="6 entries"):
        RiskModel(torch.ones(3))
    with pytest.raises(TypeError, match="must be an adapt_hooks.RiskModel"):
        DriftMonitor(risk="risk.safetensors")


def test_logistic_fit_recovers_known_weights():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(4000, 3, generator=generator) * torch.tensor([1.0, 2.0, 0.5]) + torch.tensor([0.0, 1.0, -1.0])
    true_w, true_b = torch.tensor([1.5, -0.5, 2.0]), -0.3
    y = (torch.rand(4000, generator=generator) < torch.sigmoid(x @ true_w + true_b)).float()
    w, b, mean, std = fit_logistic(x, y, l2=0.0)
    raw_w = w / std  # back to the unstandardised scale
    np.testing.assert_allclose(raw_w.numpy(), true_w.numpy(), atol=0.2)
    assert math.isclose(b - float(raw_w @ mean), true_b, abs_tol=0.2)


def test_fit_risk_learns_what_the_labels_follow(llava):
    """Label each token by whether the model's top probability at its step is below the median:
    the fitted risk must rank those tokens first (the features and labels line up)."""
    runs = []
    for seed in range(4):
        prompt = tiny_inputs(llava, batch=1, seed=seed)
        out, monitor = _guarded(llava, prompt, RiskModel.untrained(), max_new_tokens=12)
        runs.append((prompt, out[0, prompt["input_ids"].shape[1] :], monitor.risk_features[:, 0, FEATURES.index("confidence")]))
    median = torch.cat([confidence for _, _, confidence in runs]).median()
    examples = []
    for prompt, tokens, confidence in runs:
        labels = torch.full((len(tokens),), -1)
        labels[1 : len(confidence) + 1] = (confidence < median).long()
        examples.append(dict(inputs=prompt, tokens=tokens, labels=labels))
    risk = fit_risk(llava, examples, anchor=Anchor(k=3))
    assert risk.model_type == "llava" and risk.meta["fitted_on_tokens"] > 0
    positive, negative = [], []
    for example in examples:  # the monitored steps (after the anchor phase) of every caption
        _, monitor = _guarded(llava, example["inputs"], risk, max_new_tokens=12)
        labels, scores = example["labels"][1:].numpy(), monitor.risk[:, 0].numpy()
        for s in range(3, len(scores)):
            (positive if labels[s] == 1 else negative).append(scores[s])
    assert np.mean([p > n for p in positive for n in negative]) > 0.9


def test_the_risk_gate_steers_the_rows_whose_last_risk_passed_tau(llava):
    """ADAPT(gate="risk"): at each monitored step the steered rows are those whose risk at the
    previous step (from the monitor's own record) is above tau; without a risk model, refused."""
    inputs, k = tiny_inputs(llava, batch=2), 3
    risk = RiskModel(torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, -30.0]), 0.6)  # falls with the top probability
    _, observed = _guarded(llava, inputs, risk, k, max_new_tokens=12)
    tau = float(observed.risk[k - 1 :].median())  # a threshold that switches steering on for about half the cells
    method = adapt_hooks.ADAPT(tau=tau, alpha=2.0, gate="risk")
    monitor = DriftMonitor(steer=False, risk=risk)
    with adapt_hooks.guard(llava, anchor=Anchor(k=k), monitor=monitor, methods=[method]):
        generate(llava, inputs, max_new_tokens=12)
    steered = monitor.history["steered"][k:]  # [steps, layers, B]
    expected = (monitor.risk[k - 1 : -1] > tau)[:, None, :].expand_as(steered)  # history row s reads risk row s - 1
    assert torch.equal(steered.bool(), expected)
    assert 0 < expected.float().mean() < 1
    with pytest.raises(ValueError, match="reads the hallucination risk"):
        adapt_hooks.guard(llava, methods=[adapt_hooks.ADAPT(gate="risk")])
