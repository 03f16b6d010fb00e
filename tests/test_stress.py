"""adapt_hooks.stress.inject_drift: the corruption against a per-head reference, each kind moving
its signal with strength, strength 0 changing nothing, and a guard seeing the injected drift in
either order of nesting, on every family."""

from __future__ import annotations

import math
import sys
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytest
import torch

import adapt_hooks
from adapt_hooks import DriftMonitor, Method, compat, stress
from adapt_hooks.adapters import get_adapter
from adapt_hooks.hooks import perturb
from adapt_hooks.hooks.interceptor import ACTIVE
from adapt_hooks.tiny import tiny_inputs

from .conftest import generate

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from adapt_hooks.shapes import text, world  # noqa: E402
from adapt_hooks.shapes.model import load_model  # noqa: E402
from evidence import batches  # noqa: E402


def observe() -> DriftMonitor:
    return DriftMonitor(steer=False)


# -- the corruption itself ------------------------------------------------------------------------
def _reference(logits: np.ndarray, image: np.ndarray, target: np.ndarray, kind: str, gain: float) -> np.ndarray:
    """The module's formulas, one (row, head) at a time in float64."""
    out = logits.copy()
    rows, length = logits.shape[0], image.shape[1]
    for b in range(rows):
        keys = [j for j in range(length) if image[b % image.shape[0], j] and np.isfinite(logits[b, 0, 0, j])]
        for h in range(logits.shape[1]):
            for g in range(logits.shape[2]):
                l = logits[b, h, g, keys]
                if not keys:
                    continue
                if kind == "decay":
                    new = l - gain
                else:
                    if kind == "flatten":
                        new = l.mean() + (l - l.mean()) / (1 + gain)
                    else:
                        new = l + gain * target[b % target.shape[0], keys]
                    lse = lambda x: math.log(np.exp(x - x.max()).sum()) + x.max()  # noqa: E731
                    new = new + lse(l) - lse(new)
                out[b, h, g, keys] = new
    return out


@pytest.mark.parametrize("kind", stress.KINDS)
def test_corruption_matches_a_per_head_reference(kind):
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 2, 3, 12, generator=generator) * 2  # 4 rows = 2 user rows x 2 streams
    logits[1, :, :, 3] = float("-inf")  # a masked image key
    logits[3, :, :, 2:6] = float("-inf")  # a hidden image (an image-free contrast row)
    image = torch.zeros(2, 8, dtype=torch.bool)
    image[0, 2:6] = image[1, 3:7] = True
    target = torch.zeros(2, 8, dtype=torch.bool)
    target[0, 2] = target[1, 5] = True
    got = stress.corrupt(logits, image, target, kind, 1.7)
    want = _reference(logits.double().numpy(), image.numpy(), target.numpy(), kind, 1.7)
    np.testing.assert_allclose(got.double().numpy(), want, rtol=1e-5, atol=1e-5)
    assert torch.equal(got[..., 8:], logits[..., 8:])  # decode-time keys untouched
    image_total = lambda x: torch.softmax(x, -1)[..., :8].sum(-1)  # noqa: E731
    if kind != "decay":  # where it looks on the image changes, not how much
        torch.testing.assert_close(image_total(got), image_total(logits))
    else:
        assert (image_total(got)[:3] < image_total(logits)[:3]).all()


def test_border_and_sink_keys_follow_the_layout():
    layout = adapt_hooks.ImageLayout.single_grid(2, 3, 4)
    ring = stress.border_keys(layout)[0].view(3, 4)
    assert ring[1, 1:3].tolist() == [False, False] and ring[0].all() and ring[2].all() and ring[:, 0].all()
    sink = stress.sink_keys(layout, 0.5)
    assert sink.sum(-1).tolist() == [1, 1] and sink[0, 6]


# -- every kind moves its signal, growing with strength ------------------------------------------------
class Recorder(Method):
    """Records the attention every hooked decode step hands the methods (what the monitor saw)."""

    edits_attention = True

    def start(self, prompt):
        self.steps = []

    def attend(self, step):
        self.steps.append(step.attention.clone())


@pytest.fixture(scope="module")
def evidence():
    """The evidence benchmark's tiny LLaVA (trained: its image attention has structure) and four scenes."""
    model = load_model(attn_implementation="eager")
    scenes = world.decorrelated_scenes(np.random.default_rng(1), 2)
    return model, batches.prompts([text.DESCRIBE] * len(scenes), scenes)


def _signals(model, inputs, kind, strength, start=3):
    recorder, monitor = Recorder(), observe()
    injection = stress.inject_drift(model, kind, strength, start_step=start, ramp=2, seed=3) if strength else nullcontext()
    with injection, adapt_hooks.guard(model, monitor=monitor, methods=[recorder]):
        model.generate(**inputs, max_new_tokens=10, do_sample=False)
    layers = len(monitor.history["hhi"][0])
    attention = torch.stack(recorder.steps).view(-1, layers, *recorder.steps[0].shape)[start - 1 :]  # [steps, L, B, N]
    share = attention / attention.sum(-1, keepdim=True)
    grid = text.GRID
    ring = torch.zeros(grid, grid, dtype=torch.bool)
    ring[0] = ring[-1] = ring[:, 0] = ring[:, -1] = True
    sink = int(float(torch.rand((), generator=torch.Generator().manual_seed(3))) * grid * grid)
    return {
        "flatten": -monitor.history["hhi"][start - 1 :].mean(),  # spreading: concentration falls
        "border": share[..., ring.flatten()].sum(-1).mean(),
        "sink": share[..., sink].mean(),
        "decay": -monitor.history["visual_mass"][start - 1 :].mean(),  # mass leaves the image
    }[kind], monitor.history


@pytest.mark.parametrize("kind", stress.KINDS)
def test_each_kind_moves_its_signal_more_with_more_strength(evidence, kind):
    model, inputs = evidence
    values, histories = zip(*(_signals(model, inputs, kind, s) for s in (0.0, 1.0, 4.0)))
    assert values[0] < values[1] < values[2], values
    clean, drifted = histories[0], histories[2]
    for name in ("hhi", "visual_mass"):  # the steps before start_step are untouched
        assert torch.equal(clean[name][:2], drifted[name][:2])


# -- strength 0, nesting, every family ------------------------------------------------------------
def test_strength_zero_is_bit_identical(model):
    inputs = tiny_inputs(model, batch=2)
    plain = generate(model, inputs)
    with stress.inject_drift(model, "decay", 0.0, start_step=1):
        assert torch.equal(generate(model, inputs), plain)
    with stress.inject_drift(model, "flatten", 0.0, start_step=1), adapt_hooks.guard(model, monitor=observe()):
        assert torch.equal(generate(model, inputs), plain)


def test_a_guard_sees_the_injected_drift_in_either_order(model):
    inputs = tiny_inputs(model, batch=2)
    with adapt_hooks.guard(model, monitor=observe()) as clean:
        generate(model, inputs)
    with stress.inject_drift(model, "decay", 3.0, start_step=2, ramp=1):
        alone = generate(model, inputs)
    with stress.inject_drift(model, "decay", 3.0, start_step=2, ramp=1), adapt_hooks.guard(model, monitor=observe()) as outer:
        assert torch.equal(generate(model, inputs), alone)  # observing adds nothing to the drift
    with adapt_hooks.guard(model, monitor=observe()) as inner, stress.inject_drift(model, "decay", 3.0, start_step=2, ramp=1):
        assert torch.equal(generate(model, inputs), alone)
    for name, values in outer.monitor.history.items():
        torch.testing.assert_close(inner.monitor.history[name], values, equal_nan=True, rtol=0, atol=0)
    mass, clean_mass = outer.monitor.history["visual_mass"], clean.monitor.history["visual_mass"]
    assert torch.equal(mass[0], clean_mass[0])
    assert (mass[1:] < clean_mass[1:] - 1e-4).all()  # the guard saw every corrupted step


def test_the_kernel_attends_with_the_corrupted_probabilities(llava):
    """The first layer's attention weights at a corrupted decode step against the clean step's
    probabilities corrupted by the reference formula (softmax is shift-invariant, so log p serves
    as the logits)."""
    inputs = tiny_inputs(llava, batch=2)
    layout = get_adapter(llava).layout(llava.config, inputs["input_ids"], inputs)
    image = stress.image_keys(layout)

    def first_step(injection):
        with injection, torch.no_grad():
            out = llava(**inputs, use_cache=True)
            token = out.logits[:, -1:].argmax(-1)
            mask = torch.cat([inputs["attention_mask"], torch.ones_like(token)], 1)
            step = llava(input_ids=token, attention_mask=mask, output_attentions=True, **{compat.CACHE_KEYWORD: out.past_key_values})
        return step.attentions[0]  # [B, H, 1, kv]

    clean = first_step(nullcontext())
    drifted = first_step(stress.inject_drift(llava, "flatten", 2.5, start_step=1, ramp=1))
    logits = torch.log(clean.double()).numpy()  # [B, H, 1, kv]: every head its own kv head, G = 1
    want = _reference(logits, image.numpy(), image.numpy(), "flatten", 2.5)
    want = np.exp(want - want.max(-1, keepdims=True))
    want /= want.sum(-1, keepdims=True)
    np.testing.assert_allclose(drifted.double().numpy(), want, rtol=1e-4, atol=1e-6)


METHODS = {
    "vcd": lambda: [adapt_hooks.VCD()],
    "pai+cfg": lambda: [adapt_hooks.PAI(alpha=0.5, cfg_gamma=1.1)],
    "adapt, always steering": lambda: [adapt_hooks.ADAPT(tau=100.0, alpha=2.0)],
}


@pytest.mark.parametrize("methods", METHODS.values(), ids=METHODS.keys())
def test_methods_and_their_streams_answer_the_same_drift_in_either_order(llava, methods):
    inputs = tiny_inputs(llava, batch=2)
    drift = lambda: stress.inject_drift(llava, "sink", 4.0, start_step=2, ramp=1)  # noqa: E731
    vcd = lambda: adapt_hooks.guard(llava, monitor=observe(), methods=methods())  # noqa: E731
    with drift(), vcd():
        outer = generate(llava, inputs, num_beams=2)
    with vcd(), drift():
        inner = generate(llava, inputs, num_beams=2)
    with vcd():
        clean = generate(llava, inputs, num_beams=2)
    assert torch.equal(outer, inner)
    assert not torch.equal(outer, clean)


# -- lifecycle and settings ------------------------------------------------------------------------
def test_leaving_restores_the_model_and_the_guard(llava):
    implementation = compat.text_attention(llava)
    hooks = len(llava._forward_pre_hooks)
    with adapt_hooks.guard(llava, monitor=observe()) as run:
        interceptor = ACTIVE[run._name]
        base = interceptor.base
        with stress.inject_drift(llava, "border", 2.0):
            assert interceptor.base is not base
        assert interceptor.base is base
    with pytest.raises(RuntimeError, match="boom"):
        with stress.inject_drift(llava, "decay", 2.0):
            raise RuntimeError("boom")
    assert len(llava._forward_pre_hooks) == hooks
    assert all(perturb.of(m) is None for m in get_adapter(llava).attention_modules(llava))
    assert compat.text_attention(llava) == implementation


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(kind="blur"), "must be one of"),
        (dict(kind="decay", strength=-1.0), "strength"),
        (dict(kind="decay", start_step=0), "start_step"),
        (dict(kind="decay", ramp=0), "ramp"),
        (dict(kind="decay", layers=[99]), "hookable decoder layers"),
    ],
)
def test_bad_settings_are_refused(llava, settings, message):
    with pytest.raises(ValueError, match=message):
        stress.inject_drift(llava, **settings)
