"""Spatial-bias correction (docs/method.md): a per-grid mask that damps image tokens which draw
attention even on content-free images (attention sinks, border bias)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch

from . import persistence

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
