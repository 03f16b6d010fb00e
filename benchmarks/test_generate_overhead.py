"""Guard overhead on end-to-end greedy generation: guarded / unguarded, same model and inputs,
measured in the same run. Run with ``pytest benchmarks/ --benchmark-only``."""

from __future__ import annotations

import pytest
import torch

import adapt_hooks
from adapt_hooks import DriftMonitor
from adapt_hooks.tiny import model_types, tiny_inputs, tiny_model

NEW_TOKENS = 64
MODES = {
    "unguarded": None,
    "observe": lambda: DriftMonitor(steer=False),
    "steer": lambda: DriftMonitor(tau=0.9),
}
_times: dict[tuple[str, str], float] = {}


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("family", model_types())
def test_generate(benchmark, family, mode):
    torch.manual_seed(0)
    model = tiny_model(family, "sdpa")
    inputs = tiny_inputs(model, 1)

    def run():
        with torch.no_grad():
            if MODES[mode] is None:
                return model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
            with adapt_hooks.guard(model, monitor=MODES[mode]()):
                return model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)

    benchmark.pedantic(run, rounds=5, warmup_rounds=1)
    _times[(family, mode)] = benchmark.stats.stats.median
    base = _times.get((family, "unguarded"))
    if base and mode != "unguarded":
        benchmark.extra_info["ratio_vs_unguarded"] = round(_times[(family, mode)] / base, 3)
