"""The library's steering against a naive implementation of the same maths (``naive.py``: Python
loops over rows, heads and tokens, host copies and host-side gates every step), on the same
model and inputs: both steer to the same tokens, and the table shows what the fused,
device-side decode step saves."""

from __future__ import annotations

import pytest
import torch

import adapt_hooks
from adapt_hooks import DriftMonitor
from adapt_hooks.tiny import tiny_inputs, tiny_model

from naive import NaiveGuard

NEW_TOKENS = 32
TAU = 1.0


def _generate(model, inputs):
    return model.generate(**inputs, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False)


@pytest.mark.parametrize("impl", ["unguarded", "adapt-hooks", "naive"])
def test_steering_against_naive_reference(benchmark, paired, impl):
    benchmark.group = "steering: adapt-hooks vs naive reference"
    model = tiny_model("llava", "eager")
    inputs = tiny_inputs(model, 2)

    def unguarded():
        with torch.no_grad():
            return _generate(model, inputs)

    def run():
        with torch.no_grad():
            if impl == "unguarded":
                return _generate(model, inputs)
            if impl == "naive":
                with NaiveGuard(model, tau=TAU):
                    return _generate(model, inputs)
            with adapt_hooks.guard(model, monitor=DriftMonitor(tau=TAU)):
                return _generate(model, inputs)

    out = benchmark.pedantic(run, rounds=5, warmup_rounds=1)
    if impl != "unguarded":
        paired("steering, tiny LLaVA eager, batch 2", impl, unguarded, run, rounds=5)
    with torch.no_grad(), adapt_hooks.guard(model, monitor=DriftMonitor(tau=TAU)) as guarded:
        reference = _generate(model, inputs)
    if impl != "unguarded":
        assert torch.equal(out, reference)
        assert 0 < guarded.monitor.intervention_rate < 1
