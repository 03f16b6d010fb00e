"""End-to-end greedy ``generate`` (64 new tokens) on every tiny family: unguarded, observe-only,
ADAPT steering, PAI, VCD and ADAPT + VCD on the same model and inputs, in the same run. Target
with ADAPT steering: 1.30x."""

from __future__ import annotations

import pytest
import torch

import adapt_hooks
from adapt_hooks import ADAPT, PAI, VCD, DriftMonitor
from adapt_hooks.tiny import model_types, tiny_inputs, tiny_model

NEW_TOKENS = 64
TARGET = 1.30
MODES = {  # mode -> what guard() gets
    "unguarded": None,
    "observe": lambda: dict(monitor=DriftMonitor(steer=False)),
    "steer": lambda: dict(monitor=DriftMonitor(tau=0.9)),
    "steer-no-history": lambda: dict(monitor=DriftMonitor(tau=0.9, history=False)),
    "pai": lambda: dict(methods=[PAI()]),
    "vcd": lambda: dict(methods=[VCD()]),
    "adapt+vcd": lambda: dict(methods=[ADAPT(tau=0.9), VCD()]),
}


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("family", model_types())
def test_generate(benchmark, paired, family, mode):
    torch.manual_seed(0)
    model = tiny_model(family, "sdpa")
    inputs = tiny_inputs(model, 1)
    options = dict(max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False)

    def unguarded():
        with torch.no_grad():
            return model.generate(**inputs, **options)

    def guarded():
        with torch.no_grad(), adapt_hooks.guard(model, **MODES[mode]()):
            return model.generate(**inputs, **options)

    benchmark.group = f"generate {family}"
    benchmark.pedantic(unguarded if MODES[mode] is None else guarded, rounds=5, warmup_rounds=1)
    if MODES[mode] is not None:
        target = TARGET if mode.startswith("steer") else None
        value = paired(f"generate 64 tokens: {family}", mode, unguarded, guarded, rounds=5, target=target)
        benchmark.extra_info["ratio_vs_unguarded"] = round(value, 3)
