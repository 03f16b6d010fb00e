"""Cost of one hooked layer's decode step: the model's own attention kernel alone ("unguarded")
against the guard's interceptor around it, observing or steering.

Two shapes: a decode call captured from the tiny LLaVA (the whole interceptor path, Python
included), and a LLaVA-7B-shaped layer (32 heads of 128, 576 image keys in a 640-key cache)
through the fused step function itself, eagerly and through ``torch.compile``.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.modeling_utils import AttentionInterface

import adapt_hooks
from adapt_hooks import DriftMonitor, decode, steering
from adapt_hooks.layout import ImageLayout
from adapt_hooks.hooks.interceptor import _attend
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
    layout = ImageLayout(positions, torch.ones_like(positions, dtype=torch.bool), (((24, 24),),), kv - 40)
    anchor = torch.rand(1, image, generator=g)
    state = dict(
        terms=torch.stack((anchor, torch.ones_like(anchor)), -1),
        threshold=torch.full((1, 1), 2.0),
        steered=torch.zeros(1, 1, dtype=torch.int32),
        boost=torch.expm1(steering.logprior(anchor, layout, 0.5, 1e-6)),
    )
    return q, k, v, positions, state


LAYER_MODES = ("unguarded", "observe", "steer", "steer-compiled")


@pytest.mark.parametrize("mode", LAYER_MODES)
def test_llava7b_shaped_layer_step(benchmark, paired, mode):
    benchmark.group = "decode step, LLaVA-7B-shaped layer"
    q, k, v, positions, s = _llava7b_layer()
    module, scaling = _Layer(), q.shape[-1] ** -0.5
    step = decode.compiled_drift_step() if mode.endswith("compiled") else decode.drift_step
    boost = None if mode == "observe" else s["boost"]

    def guarded():  # what the interceptor does: observe, then the kernel; or attend with the steered probabilities
        probs, _, _ = step(q, k, None, scaling, None, positions, None, s["terms"], s["threshold"], s["steered"], boost, None, False)
        if probs is None:
            return sdpa_attention_forward(module, q, k, v, None, scaling=scaling)
        return _attend(probs, v, q.dtype)

    def unguarded():
        return sdpa_attention_forward(module, q, k, v, None, scaling=scaling)

    fn = unguarded if mode == "unguarded" else guarded
    with torch.no_grad():
        fn()  # compiles, for the compiled mode
        benchmark.pedantic(fn, rounds=200, warmup_rounds=20)
        if mode != "unguarded":
            paired("decode step: LLaVA-7B-shaped layer", mode, unguarded, guarded, rounds=7, number=20)
