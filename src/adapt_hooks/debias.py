"""Spatial-bias correction (spec section 1.4): a per-grid mask that damps image tokens which draw
attention even on content-free images (attention sinks, border bias)."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from . import persistence
from .prompts import chat_prompt
from .validation import check_count

KIND = "debias-mask"


class DebiasMask:
    """``M_debias`` per grid shape: ``M_i = min(1, (1/N) / B_i)`` with ``B`` the mean fused anchor of
    the model on noise images, normalised to sum 1. Multiply a fused anchor map by it (``apply``)."""

    def __init__(self, masks: Mapping[tuple[int, int], torch.Tensor], meta: Mapping[str, Any] | None = None) -> None:
        if not masks:
            raise ValueError("A DebiasMask needs at least one grid mask.")
        self.masks = {tuple(map(int, shape)): m.float() for shape, m in masks.items()}
        for (h, w), m in self.masks.items():
            if m.shape != (h, w):
                raise ValueError(f"Debias mask for grid {h}x{w} has shape {tuple(m.shape)}.")
        self.meta = dict(meta or {})

    @classmethod
    def from_bias(cls, bias: Mapping[tuple[int, int], torch.Tensor], meta: Mapping[str, Any] | None = None) -> DebiasMask:
        """The mask of measured bias maps ``B`` (any positive scale; normalised here)."""
        masks = {}
        for shape, b in bias.items():
            b = b.float() / b.float().sum().clamp_min(1e-30)
            masks[shape] = ((1.0 / b.numel()) / b.clamp_min(1e-30)).clamp(max=1.0)
        return cls(masks, meta)

    def __repr__(self) -> str:
        shapes = ", ".join(f"{h}x{w}" for h, w in self.masks)
        return f"DebiasMask(grids=[{shapes}], model_type={self.meta.get('model_type')!r}, n={self.meta.get('n')})"

    def check(self, shape: tuple[int, int]) -> None:
        """Raise a ``ValueError`` unless the mask covers grids of ``shape``."""
        if tuple(shape) not in self.masks:
            known = ", ".join(f"{h}x{w}" for h, w in self.masks)
            raise ValueError(
                f"This debias mask was estimated for grids {known}, not {shape[0]}x{shape[1]}: estimate one for this "
                "model and image layout with adapt_hooks.estimate_debias_mask(...)."
            )

    def apply(self, fused: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
        """``fused ⊙ M`` for maps ``[..., h, w]`` of grid ``shape``."""
        self.check(shape)
        return fused * self.masks[tuple(shape)].to(fused.device)

    def save(self, path: str | os.PathLike) -> None:
        persistence.save(path, KIND, {f"{h}x{w}": m for (h, w), m in self.masks.items()}, self.meta)

    @classmethod
    def load(cls, path: str | os.PathLike) -> DebiasMask:
        """A mask read from :meth:`save`'s file; a ``ValueError`` naming the file and what is wrong
        for anything but a valid mask (grid names ``HxW``, finite values in [0, 1])."""
        tensors, meta = persistence.load(path, KIND, ())
        try:
            masks = {}
            for name, tensor in tensors.items():
                try:
                    h, w = (int(v) for v in name.split("x"))
                except ValueError:
                    raise ValueError(f"its tensor {name!r} is not named HxW") from None
                persistence.check_tensor(name, tensor, 2)
                if tensor.shape != (h, w) or h < 1 or w < 1:
                    raise ValueError(f"mask {name} has shape {tuple(tensor.shape)}")
                if bool((tensor < 0).any() | (tensor > 1).any()):
                    raise ValueError(f"mask {name} has values outside [0, 1]")
                masks[(h, w)] = tensor
            return cls(masks, meta)
        except ValueError as error:
            raise ValueError(f"{os.fspath(path)!r} is not a valid adapt-hooks debias mask: {str(error).rstrip('.')}.") from error


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
    :class:`DebiasMask` (spec 1.4).

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
    from .anchor import Anchor
    from .guard import guard
    from .monitor import DriftMonitor

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
