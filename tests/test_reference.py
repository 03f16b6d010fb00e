"""The library's steering agrees with an independent, deliberately naive implementation of the
same maths (benchmarks/naive.py: per-row, per-head Python loops on host copies): same gates at
every (step, layer, row), same tokens. The GPU benchmark script is smoke-tested on the CPU."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

import adapt_hooks
from adapt_hooks import DriftMonitor
from adapt_hooks.tiny import tiny_inputs, tiny_model

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_steering_matches_the_naive_reference():
    naive = _load("naive")
    model = tiny_model("llava", "eager")
    inputs = tiny_inputs(model, 2)
    options = dict(max_new_tokens=16, min_new_tokens=16, do_sample=False)
    with torch.no_grad(), adapt_hooks.guard(model, monitor=DriftMonitor(tau=1.0)) as run:
        ours = model.generate(**inputs, **options)
    with torch.no_grad(), naive.NaiveGuard(model, tau=1.0) as reference:
        theirs = model.generate(**inputs, **options)
    steered = run.monitor.history["steered"]  # [steps, layers, rows]
    k = run.anchor.k
    assert 0 < run.monitor.intervention_rate < 1  # some cells steered, some not: the gate matters
    for (step, layer), gates in reference.gates.items():
        assert steered[step - 1, layer].bool().tolist() == gates, (step, layer)
    assert len(reference.gates) == (steered.shape[0] - k) * steered.shape[1]
    assert torch.equal(ours, theirs)


def test_gpu_benchmark_script_runs_its_smoke_configuration(capsys):
    script = _load("gpu_overhead")
    assert script.main(["--smoke"]) == 0
    out = capsys.readouterr().out
    assert "steer" in out and "without a host sync" in out
