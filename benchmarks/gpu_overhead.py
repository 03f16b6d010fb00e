"""Guard overhead on a LLaVA-1.5-7B-shaped model in fp16 on a GPU: random weights built from a
config (no download), 576 image tokens, 256 new tokens, greedy. Prints the unguarded time, the
guarded times (observe-only, ADAPT steering, with ``compile=True``, PAI with and without its CFG
step, VCD, ADAPT + VCD), their ratios (target 1.05x with ADAPT steering and PAI), peak memory, and checks that
the guarded decode loop never synchronises with the host (``torch.cuda.set_sync_debug_mode("error")``).

    python benchmarks/gpu_overhead.py                 # on a CUDA machine
    python benchmarks/gpu_overhead.py --smoke         # the same code path on a tiny CPU model

With random weights the gate may or may not fire; the steering path costs the same either way
(the gate acts through arithmetic, never through a branch), so the timing is representative.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

import adapt_hooks
from adapt_hooks import ADAPT, PAI, VCD, DriftMonitor, compat

IMAGE_TOKEN = 32000


def llava_config(smoke: bool) -> LlavaConfig:
    """LLaVA-1.5-7B's shapes (CLIP ViT-L/14 at 336 px, Llama-2-7B), or a tiny stand-in for ``--smoke``."""
    if smoke:
        vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                  image_size=336, patch_size=14, projection_dim=32)
        text = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                           vocab_size=32064, max_position_embeddings=1024)
    else:
        vision = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                                  image_size=336, patch_size=14, projection_dim=768)
        text = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                           vocab_size=32064, max_position_embeddings=4096)
    return LlavaConfig(vision_config=vision, text_config=text, image_token_id=IMAGE_TOKEN, vision_feature_layer=-2,
                       vision_feature_select_strategy="default")


def build(smoke: bool, device: str, dtype: torch.dtype, attn: str):
    config = llava_config(smoke)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlavaForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(default)
    model.set_attn_implementation(attn)
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(100, 32000, (1, 40), generator=g)
    input_ids = torch.cat([prompt[:, :5], torch.full((1, 576), IMAGE_TOKEN), prompt[:, 5:]], dim=1)
    inputs = {
        "input_ids": input_ids.to(device),
        "attention_mask": torch.ones_like(input_ids).to(device),
        "pixel_values": torch.randn(1, 3, 336, 336, generator=g).to(device, dtype),
    }
    return model.eval(), inputs


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed_generate(model, inputs, guarding: dict | None, new_tokens: int, device: str) -> float:
    """Seconds of one greedy generation, inside ``guard(model, **guarding)`` unless it is None."""
    options = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    _sync(device)
    start = time.perf_counter()
    with torch.no_grad():
        if guarding is None:
            model.generate(**inputs, **options)
        else:
            with adapt_hooks.guard(model, **guarding):
                model.generate(**inputs, **options)
    _sync(device)
    return time.perf_counter() - start


def decode_loop_without_sync(model, inputs, steps: int, device: str, methods=None) -> str:
    """Prefill, then ``steps`` greedy decode steps by hand, guarded (``methods``, default the
    monitor's ADAPT steering), with CUDA's sync debug mode set to "error" around the decode steps:
    any host synchronisation raises."""
    with torch.no_grad(), adapt_hooks.guard(model, monitor=DriftMonitor(tau=1e9), methods=methods) as run:
        out = model(**inputs, use_cache=True)
        cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
        mask = inputs["attention_mask"]
        if device == "cuda":
            torch.cuda.set_sync_debug_mode("error")
        try:
            for _ in range(steps):
                mask = torch.cat([mask, torch.ones_like(token)], dim=1)
                out = model(input_ids=token, attention_mask=mask, **{compat.CACHE_KEYWORD: cache}, use_cache=True)
                cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
        finally:
            if device == "cuda":
                torch.cuda.set_sync_debug_mode("default")
    steered = run.monitor.intervention_rate
    names = "ADAPT" if methods is None else " + ".join(type(m).__name__ for m in methods)
    return f"{steps} decode steps of {names} without a host sync (steered {steered:.0%} of cells)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny model on the CPU: checks the script, measures nothing")
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    parser.add_argument("--no-compile", action="store_true", help="skip the compile=True variant")
    args = parser.parse_args(argv)
    if args.smoke:
        device, dtype, new_tokens, rounds = "cpu", torch.float32, 8, 1
    elif not torch.cuda.is_available():
        print("gpu_overhead.py: no CUDA device here; run it on a GPU machine (or pass --smoke).", file=sys.stderr)
        return 2
    else:
        device, dtype, new_tokens, rounds = "cuda", torch.float16, args.new_tokens, args.rounds
    model, inputs = build(args.smoke, device, dtype, args.attn)
    modes = {
        "unguarded": lambda: None,
        "observe": lambda: dict(monitor=DriftMonitor(steer=False)),
        "steer": lambda: dict(monitor=DriftMonitor()),
        "steer, no history": lambda: dict(monitor=DriftMonitor(history=False)),
        "pai": lambda: dict(methods=[PAI()]),
        "pai + cfg": lambda: dict(methods=[PAI(cfg_gamma=1.1)]),
        "vcd": lambda: dict(methods=[VCD()]),
        "adapt + vcd": lambda: dict(methods=[ADAPT(), VCD()]),
    }
    if not args.no_compile and not args.smoke:
        modes["steer, compile=True"] = lambda: dict(monitor=DriftMonitor(compile=True))
    for make in modes.values():  # warm-up (and compilation)
        timed_generate(model, inputs, make(), min(new_tokens, 16), device)
    times: dict[str, list[float]] = {name: [] for name in modes}
    peaks: dict[str, int] = {}
    for _ in range(rounds):
        for name, make in modes.items():
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            times[name].append(timed_generate(model, inputs, make(), new_tokens, device))
            if device == "cuda":
                peaks[name] = torch.cuda.max_memory_allocated()
    base = statistics.median(times["unguarded"])
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu (smoke)"
    print(f"{name}, torch {torch.__version__}, {args.attn}, {dtype}, 576 image tokens, {new_tokens} new tokens, "
          f"median of {rounds}")
    for mode, values in times.items():
        median = statistics.median(values)
        peak = f"  peak {peaks[mode] / 2**30:.2f} GiB" if mode in peaks else ""
        print(f"  {mode:22s} {median:8.3f} s  {median / base:5.3f}x  {1e3 * median / new_tokens:7.2f} ms/token{peak}")
    print("  " + decode_loop_without_sync(model, inputs, min(new_tokens, 32), device))
    print("  " + decode_loop_without_sync(model, inputs, min(new_tokens, 32), device, [PAI(cfg_gamma=1.1), VCD()]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
