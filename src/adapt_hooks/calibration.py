"""Measuring a model's spatial bias (docs/method.md, spatial-bias correction): guarded runs on noise images whose mean
fused anchor becomes a :class:`~adapt_hooks.debias.DebiasMask`."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn

from .anchor import Anchor
from .debias import DebiasMask
from .hooks.guard import guard
from .monitor import DriftMonitor
from .prompts import chat_prompt
from .validation import check_count


def processor_inputs(processor, prompt: str = "Describe the image.") -> Callable[[], Mapping[str, torch.Tensor]]:
    """An inputs builder from a transformers processor: ``prompt`` with one grey image of the
    processor's input size, through the processor's chat template when it has one."""
    from PIL import Image

    size = getattr(processor.image_processor, "crop_size", None) or getattr(processor.image_processor, "size", None) or {}
    side = size.get("height") or size.get("shortest_edge") or 336
    image = Image.new("RGB", (size.get("width", side), side), (128, 128, 128))
    text = chat_prompt(processor, prompt)
    return lambda: processor(images=image, text=text, return_tensors="pt")


def estimate_debias_mask(
    model: nn.Module,
    processor_or_inputs_builder,
    n: int = 8,
    *,
    prompt: str = "Describe the image.",
    seed: int = 0,
    k: int = 5,
    layers=None,
) -> DebiasMask:
    """Run ``model`` on ``n`` Gaussian-noise images and turn the mean of their fused anchors into a
    :class:`DebiasMask` (docs/method.md).

    The second argument is the model's processor (used with ``prompt`` and a grey image) or a
    callable returning the inputs of one prompt with an image; either way the ``pixel_values`` are
    replaced by N(0, 1) noise in normalised pixel space, seeded by ``seed``.
    """
    if hasattr(processor_or_inputs_builder, "image_processor"):
        inputs_builder = processor_inputs(processor_or_inputs_builder, prompt)
    elif callable(processor_or_inputs_builder):
        inputs_builder = processor_or_inputs_builder
    else:
        raise TypeError("estimate_debias_mask() needs the model's processor or a callable returning model inputs.")
    n = check_count("estimate_debias_mask(n=...)", n)
    generator = torch.Generator().manual_seed(seed)
    sums: dict[tuple[int, int], torch.Tensor] = {}
    counts: dict[tuple[int, int], int] = {}
    for _ in range(n):
        inputs = dict(inputs_builder())
        pixels = inputs.get("pixel_values")
        if pixels is None:
            raise ValueError("The inputs must have `pixel_values` (a prompt with an image).")
        device = next(model.parameters()).device
        inputs = {name: v.to(device) if isinstance(v, torch.Tensor) else v for name, v in inputs.items()}
        noise = torch.randn(pixels.shape, generator=generator)
        inputs["pixel_values"] = noise.to(device=device, dtype=next(model.parameters()).dtype)
        with torch.no_grad(), guard(model, anchor=Anchor(k), monitor=DriftMonitor(steer=False, history=False), layers=layers) as run:
            model.generate(**inputs, max_new_tokens=k + 1, do_sample=False, min_new_tokens=k + 1)
        anchor = run.anchor
        if anchor.fused is None:
            raise ValueError("The noise prompt produced no anchor: does inputs_builder() put image tokens in the prompt?")
        for b, grids in enumerate(anchor.layout.grids):
            for i, g in enumerate(grids):
                fused = anchor.grid(b, i, anchor.fused).detach().cpu()
                sums[(g.height, g.width)] = sums.get((g.height, g.width), 0) + fused / fused.sum().clamp_min(1e-30)
                counts[(g.height, g.width)] = counts.get((g.height, g.width), 0) + 1
    meta = {
        "model_type": model.config.model_type,
        "grids": [f"{h}x{w}" for h, w in sums],
        "n": n,
        "seed": seed,
        "k": k,
    }
    return DebiasMask.from_bias({shape: total / counts[shape] for shape, total in sums.items()}, meta)
