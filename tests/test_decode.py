"""The fused decode step: ``torch.compile`` gives the eager result, and a compilation failure
falls back to eager with one warning instead of breaking generation."""

from __future__ import annotations

import shutil

import pytest
import torch

import adapt_hooks
from adapt_hooks import DriftMonitor, decode
from adapt_hooks.tiny import tiny_inputs

from .conftest import generate


def _steered(model, monitor):
    with adapt_hooks.guard(model, monitor=monitor) as run:
        out = generate(model, tiny_inputs(model, 2), max_new_tokens=10)
    return out, run.monitor


@pytest.mark.skipif(not (shutil.which("c++") or shutil.which("g++")), reason="torch.compile on CPU needs a C++ compiler")
def test_compiled_step_matches_eager(llava):
    eager_out, eager = _steered(llava, DriftMonitor(tau=1.2))
    compiled_out, compiled = _steered(llava, DriftMonitor(tau=1.2, compile=True))
    assert torch.equal(compiled_out, eager_out)
    assert eager.intervention_rate > 0 and compiled.intervention_rate == eager.intervention_rate
    for name, values in eager.history.items():
        torch.testing.assert_close(compiled.history[name], values, equal_nan=True, atol=1e-5, rtol=1e-4, msg=name)


def test_failed_compilation_falls_back_to_eager(llava, monkeypatch):
    def broken_compile(fn, **kwargs):
        def fail(*args, **kw):
            raise RuntimeError("no compiler here")

        return fail

    monkeypatch.setattr(torch, "compile", broken_compile)
    step = decode.compiled(decode.observe)
    monkeypatch.setattr(decode, "compiled_observe", lambda: (step, decode.compiled(decode.observe_probs)))
    expected, _ = _steered(llava, DriftMonitor(tau=1.2))
    with pytest.warns(UserWarning, match="torch.compile of the decode step failed.*no compiler here") as caught:
        out, monitor = _steered(llava, DriftMonitor(tau=1.2, compile=True))
    assert len([w for w in caught if "torch.compile" in str(w.message)]) == 1
    assert torch.equal(out, expected) and monitor.intervention_rate > 0
