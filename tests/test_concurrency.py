"""Several guards at once: two models guarded together, two threads each guarding its own model,
and copying or pickling a guarded model (refused inside the block, fine outside).

Elsewhere: nested guards on one model
(tests/test_lifecycle.py::test_nested_guards_inner_wins_outer_restored) and a guard reused across
``with`` blocks (tests/test_lifecycle.py::test_guard_can_be_reentered_but_not_while_active)."""

from __future__ import annotations

import copy
import io
import pickle
import threading

import pytest
import torch

import adapt_hooks
from adapt_hooks import Anchor, DriftMonitor
from adapt_hooks.tiny import tiny_inputs, tiny_model

from .conftest import _model, generate
from .test_lifecycle import snapshot

FAMILIES = ("llava", "qwen2_vl")


def _guarded(model, inputs):
    """One steered guarded generation: its tokens, anchor and history."""
    with adapt_hooks.guard(model, anchor=Anchor(k=3), monitor=DriftMonitor(tau=0.9, alpha=2.0)) as run:
        out = generate(model, inputs)
    return out, run.anchor.weights, run.monitor.history


def _same(a, b) -> None:
    assert torch.equal(a[0], b[0])
    torch.testing.assert_close(a[1], b[1])
    for name in a[2]:
        torch.testing.assert_close(a[2][name], b[2][name], equal_nan=True)


@pytest.fixture(scope="module")
def alone():
    """Each model's result when guarded on its own."""
    models = [_model(family, "sdpa") for family in FAMILIES]
    inputs = [tiny_inputs(m, 2) for m in models]
    return models, inputs, [_guarded(m, i) for m, i in zip(models, inputs)]


def test_two_models_guarded_at_once(alone):
    (first, second), (in_first, in_second), expected = alone
    monitor = dict(tau=0.9, alpha=2.0)
    with adapt_hooks.guard(first, anchor=Anchor(k=3), monitor=DriftMonitor(**monitor)) as a, adapt_hooks.guard(
        second, anchor=Anchor(k=3), monitor=DriftMonitor(**monitor)
    ) as b:
        out_second = generate(second, in_second)  # interleaved: each guard sees only its own model
        out_first = generate(first, in_first)
    _same((out_first, a.anchor.weights, a.monitor.history), expected[0])
    _same((out_second, b.anchor.weights, b.monitor.history), expected[1])


def test_two_threads_guard_two_models(alone):
    models, inputs, expected = alone
    results, errors = [None, None], []

    def work(i):
        try:
            for _ in range(2):
                results[i] = _guarded(models[i], inputs[i])
        except BaseException as error:  # surfaced below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    for got, want in zip(results, expected):
        _same(got, want)
    assert [m.config.get_text_config()._attn_implementation for m in models] == ["sdpa", "sdpa"]


def test_a_guarded_model_refuses_copies_and_pickles_until_the_block_ends():
    model = tiny_model("llava", "sdpa")
    inputs = tiny_inputs(model, 1)
    before = snapshot(model)
    with adapt_hooks.guard(model) as run:
        for attempt in (copy.deepcopy, pickle.dumps, lambda m: torch.save(m, io.BytesIO())):
            with pytest.raises(TypeError, match=r"cannot be copied or pickled.*before entering or after leaving"):
                attempt(model)
        generate(model, inputs)  # the guard is intact
    assert run.anchor.weights is not None
    assert snapshot(model) == before
    twin = copy.deepcopy(model)
    assert torch.equal(generate(twin, inputs), generate(model, inputs))
    # (pickling a model that has run a forward call fails on transformers' own output-capturing hooks)
