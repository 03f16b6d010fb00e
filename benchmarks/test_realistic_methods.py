"""Watching and every decoding method at realistic shapes on the CPU: a LLaVA-1.5-7B-shaped
language model (hidden 4096, 32 heads, MLP 11008, a 32 064-token head) cut to two decoder layers,
576 image tokens, batch 1. Each variant starts its own prompt (prefill untimed), then 48 greedy
decode steps are timed in process CPU time, in the order unguarded, variant, variant, unguarded
(which cancels a drift of the machine's speed and any advantage of going first or second); the
ratio is the median over rounds of the variant's two runs over the two unguarded ones, under the
same attention implementation (one thread, like every suite here). Targets on the CPU:
watching (observe-only, with history or with a risk model, sdpa or eager) 1.03x, PAI 1.05x,
VCD 2.1x (it does twice the arithmetic of the user's rows); the unguarded model on a batch of two
copies of the prompt shows what the second row alone costs.
"""

from __future__ import annotations

import statistics
import time

import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

import adapt_hooks
from adapt_hooks import ADAPT, PAI, VCD, DriftMonitor, RiskModel, compat

IMAGE_TOKEN, STEPS, ROUNDS = 32000, 48, 3
GROUP = "decode, LLaVA-7B-shaped 2-layer model"
WATCH_GROUP = "watching, LLaVA-7B-shaped 2-layer model"
RISK = RiskModel(torch.tensor([-1.7, 0.2, -0.1, -1.1, 1.3, -1.0]))  # the cost does not depend on the weights
#: name -> (monitor, methods, attention implementation, target)
WATCHING = {
    "observe": (lambda: DriftMonitor(history=False), list, "sdpa", 1.03),
    "observe + history": (DriftMonitor, list, "sdpa", 1.03),
    "observe + risk": (lambda: DriftMonitor(risk=RISK), list, "sdpa", 1.03),
    "eager: observe + risk": (lambda: DriftMonitor(risk=RISK), list, "eager", 1.03),
}
METHODS = {
    "adapt": (lambda: [ADAPT()], None),
    "pai": (lambda: [PAI()], 1.05),
    "pai + cfg": (lambda: [PAI(cfg_gamma=1.1)], None),
    "vcd": (lambda: [VCD()], 2.10),
    "adapt + vcd": (lambda: [ADAPT(), VCD()], None),
}


def _model():
    vision = CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2,
                              image_size=336, patch_size=14, projection_dim=64)
    text = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=2, num_attention_heads=32,
                       vocab_size=32064, max_position_embeddings=4096)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=IMAGE_TOKEN, vision_feature_layer=-1,
                         vision_feature_select_strategy="default")
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).eval()
    model.set_attn_implementation("sdpa")
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(100, 32000, (1, 40), generator=g)
    input_ids = torch.cat([prompt[:, :5], torch.full((1, 576), IMAGE_TOKEN), prompt[:, 5:]], dim=1)
    inputs = {"input_ids": input_ids, "pixel_values": torch.randn(1, 3, 336, 336, generator=g)}
    return model, inputs


def _decode_seconds(model, inputs, monitor=None, methods=None, implementation: str = "sdpa", steps: int = STEPS) -> float:
    """Prefill (untimed), then the CPU time of ``steps`` greedy decode steps, guarded or not."""
    model.set_attn_implementation(implementation)
    guarded = monitor is not None or methods is not None
    guard = adapt_hooks.guard(model, monitor=(monitor or (lambda: DriftMonitor(history=False)))(), methods=methods()) if guarded else None
    with torch.no_grad():
        if guard is not None:
            guard.__enter__()
        try:
            out = model(**inputs, use_cache=True, logits_to_keep=1)
            cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
            start = time.process_time()
            for _ in range(steps):
                out = model(input_ids=token, **{compat.CACHE_KEYWORD: cache}, use_cache=True, logits_to_keep=1)
                cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
            return time.process_time() - start
        finally:
            if guard is not None:
                guard.__exit__(None, None, None)


def _ratios(model, inputs, variants: dict) -> tuple[dict[str, float], list[float]]:
    """Median over :data:`ROUNDS` of each variant's ABBA ratio against the unguarded model under
    the same attention implementation; and every unguarded run's seconds."""
    ratios = {name: [] for name in variants}
    baseline = []
    for _ in range(ROUNDS):
        for name, (variant_inputs, monitor, methods, implementation) in variants.items():
            first = _decode_seconds(model, inputs, implementation=implementation)
            pair = sum(_decode_seconds(model, variant_inputs, monitor, methods, implementation) for _ in range(2))
            baseline += [first, _decode_seconds(model, inputs, implementation=implementation)]
            ratios[name].append(pair / (first + baseline[-1]))
    return {name: statistics.median(values) for name, values in ratios.items()}, baseline


def _report(benchmark, record_ratio, group, model, inputs, ratios, baseline, targets) -> None:
    benchmark.group = group
    benchmark.pedantic(lambda: _decode_seconds(model, inputs), rounds=1, iterations=1)
    for name, ratio in ratios.items():
        record_ratio(group, name, ratio, targets.get(name))
        benchmark.extra_info[f"{name} / unguarded"] = round(ratio, 3)
    benchmark.extra_info["unguarded ms per step"] = round(1e3 * statistics.median(baseline) / STEPS, 1)


def _guard_share(model, inputs, monitor, implementation: str, monkeypatch) -> float:
    """The share of a guarded run's decode time spent inside the guard's own step work (its
    decode step and forward hooks), timed in the run itself: an estimate of the overhead that a
    busy machine's speed drift, which moves the end-to-end ratio by a few percent, cannot reach."""
    from adapt_hooks.hooks.guard import Guard

    spent = [0.0]

    def timed(fn):
        def call(*args, **kwargs):
            start = time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[0] += time.process_time() - start

        return call

    with monkeypatch.context() as patch:
        for name in ("decode_step", "_on_forward", "_on_output"):
            patch.setattr(Guard, name, timed(getattr(Guard, name)))
        _decode_seconds(model, inputs, monitor, list, implementation, steps=0)
        prefill, spent[0] = spent[0], 0.0  # what the prefill's hooks cost, outside the timed steps
        total = _decode_seconds(model, inputs, monitor, list, implementation)
    return (spent[0] - prefill) / total


def test_watching_at_realistic_shapes(benchmark, record_ratio, monkeypatch):
    """An observe-only guard, as the early warning runs on every request: history, risk, sdpa and eager."""
    model, inputs = _model()
    _decode_seconds(model, inputs)  # warm-up
    variants = {name: (inputs, monitor, methods, impl) for name, (monitor, methods, impl, _) in WATCHING.items()}
    ratios, baseline = _ratios(model, inputs, variants)
    _report(benchmark, record_ratio, WATCH_GROUP, model, inputs, ratios, baseline, {n: v[3] for n, v in WATCHING.items()})
    for name, (monitor, _, implementation, _) in WATCHING.items():
        share = _guard_share(model, inputs, monitor, implementation, monkeypatch)
        record_ratio(WATCH_GROUP, f"{name}: 1 + guard share", 1 + share)
        benchmark.extra_info[f"{name}: guard share of decode time"] = round(share, 4)


def test_every_method_at_realistic_shapes(benchmark, record_ratio):
    model, inputs = _model()
    doubled = {name: torch.cat([value, value]) for name, value in inputs.items()}
    _decode_seconds(model, inputs)  # warm-up
    variants = {"observe": (inputs, None, list, "sdpa")}
    variants |= {name: (inputs, None, methods, "sdpa") for name, (methods, _) in METHODS.items()}
    variants["unguarded, 2 rows"] = (doubled, None, None, "sdpa")  # what VCD's extra row costs the model itself
    ratios, baseline = _ratios(model, inputs, variants)
    _report(benchmark, record_ratio, GROUP, model, inputs, ratios, baseline, {n: v[1] for n, v in METHODS.items()})
