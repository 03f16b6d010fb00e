"""Cost of one hooked layer's decode step: the model's own attention kernel alone ("unguarded")
against the guard's interceptor around it, observing or steering.

Two shapes: a decode call captured from the tiny LLaVA (the whole interceptor path, Python
included), and a LLaVA-7B-shaped layer (32 heads of 128, 576 image keys in a 640-key cache)
through the monitor and the methods themselves: observing, ADAPT steering (eager and through
``torch.compile``) and PAI.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.modeling_utils import AttentionInterface

import adapt_hooks
from adapt_hooks import Anchor, DriftMonitor
from adapt_hooks.hooks.interceptor import attend
from adapt_hooks.layout import Grid, ImageLayout
from adapt_hooks.methods.adapt import ADAPT
from adapt_hooks.methods.base import Prompt
from adapt_hooks.methods.pai import PAI
from adapt_hooks.tiny import tiny_inputs, tiny_model

TINY_MODES = {"unguarded": None, "observe": dict(steer=False), "steer": dict(tau=2.0), "steer-no-history": dict(tau=2.0, history=False)}


def _captured_call(monitor: DriftMonitor):
    """A guard left in its decode state on the tiny LLaVA, and one captured decode call of layer 1."""
    model = tiny_model("llava", "sdpa")
    inputs = tiny_inputs(model, 1)
    run = adapt_hooks.guard(model, monitor=monitor).__enter__()
    interceptor = AttentionInterface._global_mapping[run._name]
    calls = []

    def spy(module, query, key, value, mask, **kwargs):
        if query.shape[2] == 1 and module.layer_idx == 1:
            calls.append((module, query, key, value, mask, kwargs))
        return interceptor(module, query, key, value, mask, **kwargs)

    AttentionInterface._global_mapping[run._name] = spy
    with torch.no_grad():
        model.generate(**inputs, max_new_tokens=12, do_sample=False)
    AttentionInterface._global_mapping[run._name] = interceptor
    return run, interceptor, calls[-1]


@pytest.mark.parametrize("mode", list(TINY_MODES))
def test_tiny_layer_step(benchmark, paired, mode):
    benchmark.group = "decode step, tiny LLaVA layer"
    run, interceptor, (module, q, k, v, mask, kwargs) = _captured_call(DriftMonitor(**(TINY_MODES[mode] or {})))

    def unguarded():
        return interceptor.base(module, q, k, v, mask, **kwargs)

    def guarded():
        return interceptor(module, q, k, v, mask, **kwargs)

    try:
        with torch.no_grad():
            benchmark.pedantic(unguarded if mode == "unguarded" else guarded, rounds=2000, warmup_rounds=100)
            if mode != "unguarded":
                paired("decode step: tiny LLaVA layer", mode, unguarded, guarded, rounds=7, number=300)
    finally:
        run.__exit__(None, None, None)


class _Layer(nn.Module):
    num_key_value_groups = 1
    is_causal = True


def _llava7b_layer(kv: int = 640, image: int = 576, heads: int = 32, dim: int = 128):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, heads, n, dim, generator=g) for n in (1, kv, kv))
    positions = torch.arange(5, 5 + image)[None]
    layout = ImageLayout(positions, torch.ones_like(positions, dtype=torch.bool), ((Grid(0, 24, 24),),), kv - 40)
    anchor = Anchor.from_weights(torch.rand(24, 24, generator=g))
    anchor.begin(layout, [0], 1)
    return q, k, v, layout, anchor


def _layer_step(mode: str, layout: ImageLayout, anchor: Anchor):
    """What the guard does for one monitored (step, layer): the monitor observes, the methods edit."""
    monitor = DriftMonitor(normalize=None, history=False, compile=mode.endswith("compiled"))
    monitor.begin(layout, 1)
    methods = {"unguarded": [], "observe": [], "pai": [PAI(alpha=0.2, layers=[0])]}.get(mode, [ADAPT(tau=2.0)])
    image_tokens = torch.zeros(layout.positions.shape[0], layout.prefill_length, dtype=torch.bool)
    image_tokens.scatter_(1, layout.positions, True)
    for method in methods:
        method.start(Prompt(layout, anchor, (0,), 1, None, image_tokens))
    positions = layout.positions

    def step(q, k, scaling):
        observed = monitor.observe(0, 0, q, k, None, scaling, None, positions, None, anchor)
        for method in methods:
            method.attend(observed)
        monitor.record(observed)
        return observed.result()

    return step


LAYER_MODES = ("unguarded", "observe", "steer", "steer-compiled", "pai")


@pytest.mark.parametrize("mode", LAYER_MODES)
def test_llava7b_shaped_layer_step(benchmark, paired, mode):
    benchmark.group = "decode step, LLaVA-7B-shaped layer"
    q, k, v, layout, anchor = _llava7b_layer()
    module, scaling = _Layer(), q.shape[-1] ** -0.5
    step = _layer_step(mode, layout, anchor)

    def guarded():  # what the interceptor does: observe, then the kernel; or attend with the edited probabilities
        probs = step(q, k, scaling)
        if probs is None:
            return sdpa_attention_forward(module, q, k, v, None, scaling=scaling)
        return attend(probs, v, q.dtype)

    def unguarded():
        return sdpa_attention_forward(module, q, k, v, None, scaling=scaling)

    fn = unguarded if mode == "unguarded" else guarded
    with torch.no_grad():
        fn()  # compiles, for the compiled mode
        benchmark.pedantic(fn, rounds=200, warmup_rounds=20)
        if mode != "unguarded":
            paired("decode step: LLaVA-7B-shaped layer", mode, unguarded, guarded, rounds=7, number=20)
