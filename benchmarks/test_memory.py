"""Memory: peak allocation of a guarded generation against the unguarded one (CUDA's allocator
statistics on a GPU, the profiler's allocation events on the CPU), and the guard's own state,
which must not grow with the number of generated tokens when history is off."""

from __future__ import annotations

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

import adapt_hooks
from adapt_hooks import DriftMonitor
from adapt_hooks.tiny import tiny_inputs, tiny_model

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def peak_bytes(fn) -> int:
    """Peak bytes allocated by ``fn`` above what was allocated when it started."""
    if DEVICE == "cuda":
        torch.cuda.synchronize()
        start = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - start
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    current = peak = 0
    for _, nbytes in events:
        current += nbytes
        peak = max(peak, current)
    return peak


def _generate(model, inputs, monitor, new_tokens):
    def run():
        with torch.no_grad():
            if monitor is None:
                return model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
            with adapt_hooks.guard(model, monitor=monitor):
                return model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)

    return run


@pytest.mark.parametrize("mode", ["unguarded", "steer", "steer-no-history"])
def test_peak_memory(benchmark, ratio, mode):
    benchmark.group = "peak memory, tiny LLaVA, batch 2, 64 tokens"
    model = tiny_model("llava", "sdpa").to(DEVICE)
    inputs = {k: v.to(DEVICE) for k, v in tiny_inputs(model, 2).items()}
    monitor = {"unguarded": None, "steer": DriftMonitor(tau=0.9), "steer-no-history": DriftMonitor(tau=0.9, history=False)}[mode]
    run = _generate(model, inputs, monitor, 64)
    run()  # warm-up: allocator caches, lazily built buffers
    peaks = []
    benchmark.pedantic(lambda: peaks.append(peak_bytes(run)), rounds=3, warmup_rounds=0)
    peak = min(peaks)
    benchmark.extra_info["peak_kib"] = round(peak / 1024, 1)
    ratio(benchmark, f"peak memory ({DEVICE}): tiny LLaVA, 64 tokens", mode, value=peak)


def test_state_does_not_grow_with_tokens(benchmark):
    benchmark.group = "guard state bytes, history off"
    model = tiny_model("llava", "sdpa")
    inputs = tiny_inputs(model, 2)
    sizes = {}

    def measure():
        for new_tokens in (16, 128):
            with torch.no_grad(), adapt_hooks.guard(model, monitor=DriftMonitor(tau=0.9, history=False)) as run:
                model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
            state = run.monitor._state_tensors() + [t for m in run.methods for t in m.state_tensors()]
            sizes[new_tokens] = sum(t.numel() * t.element_size() for t in state)

    benchmark.pedantic(measure, rounds=1, warmup_rounds=0)
    benchmark.extra_info.update({f"state_bytes_{n}_tokens": size for n, size in sizes.items()})
    assert sizes[16] == sizes[128] > 0
