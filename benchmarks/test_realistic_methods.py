"""Every decoding method at realistic shapes on the CPU: a LLaVA-1.5-7B-shaped language model
(hidden 4096, 32 heads, MLP 11008, a 32 064-token head) cut to two decoder layers, 576 image
tokens, batch 1. Each variant starts its own prompt (prefill untimed), then 48 greedy decode steps
are timed in process CPU time, in the order unguarded, variant, variant, unguarded (which cancels
a drift of the machine's speed and any advantage of going first or second); the ratio is the
median over rounds of the variant's two runs over the two unguarded ones (one thread, like every
suite here). Targets on the CPU:
PAI 1.05x, VCD 2.1x (it does twice the arithmetic of the user's rows); the unguarded model on a
batch of two copies of the prompt shows what the second row alone costs.
"""

from __future__ import annotations

import statistics
import time

import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

import adapt_hooks
from adapt_hooks import ADAPT, PAI, VCD, DriftMonitor, compat

IMAGE_TOKEN, STEPS, ROUNDS = 32000, 48, 3
GROUP = "decode, LLaVA-7B-shaped 2-layer model"
VARIANTS = {
    "unguarded": (None, None),
    "observe": (lambda: [], None),
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


def _decode_seconds(model, inputs, methods) -> float:
    """Prefill (untimed), then the CPU time of ``STEPS`` greedy decode steps, guarded or not."""
    guard = adapt_hooks.guard(model, monitor=DriftMonitor(history=False), methods=methods()) if methods else None
    with torch.no_grad():
        if guard is not None:
            guard.__enter__()
        try:
            out = model(**inputs, use_cache=True, logits_to_keep=1)
            cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
            start = time.process_time()
            for _ in range(STEPS):
                out = model(input_ids=token, **{compat.CACHE_KEYWORD: cache}, use_cache=True, logits_to_keep=1)
                cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
            return time.process_time() - start
        finally:
            if guard is not None:
                guard.__exit__(None, None, None)


def test_every_method_at_realistic_shapes(benchmark, record_ratio):
    model, inputs = _model()
    doubled = {name: torch.cat([value, value]) for name, value in inputs.items()}
    _decode_seconds(model, inputs, None)  # warm-up
    variants = {name: (inputs, methods) for name, (methods, _) in VARIANTS.items() if name != "unguarded"}
    variants["unguarded, 2 rows"] = (doubled, None)  # what VCD's extra row costs the model itself
    ratios = {name: [] for name in variants}
    baseline = []
    for _ in range(ROUNDS):
        for name, (variant_inputs, methods) in variants.items():
            first = _decode_seconds(model, inputs, None)
            pair = sum(_decode_seconds(model, variant_inputs, methods) for _ in range(2))
            baseline += [first, _decode_seconds(model, inputs, None)]
            ratios[name].append(pair / (first + baseline[-1]))
    benchmark.group = GROUP
    benchmark.pedantic(lambda: _decode_seconds(model, inputs, None), rounds=1, iterations=1)
    targets = {name: target for name, (_, target) in VARIANTS.items()}
    for name, values in ratios.items():
        ratio = statistics.median(values)
        record_ratio(GROUP, name, ratio, targets.get(name))
        benchmark.extra_info[f"{name} / unguarded"] = round(ratio, 3)
    benchmark.extra_info["unguarded ms per step"] = round(1e3 * statistics.median(baseline) / STEPS, 1)
