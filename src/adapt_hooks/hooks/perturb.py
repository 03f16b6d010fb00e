"""Corruptions of a decode step's attention logits that a guard must observe as the model's own.

A stress test (:func:`adapt_hooks.stress.inject_drift`) changes what the attention kernels
compute; a guard on the same model reads attention by recomputing it from the query and keys, so
it asks this registry for the corruption of each hooked layer and applies it before observing.
Neither side imports the other.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

#: ``logits [B, H_kv, G, kv] -> logits`` of one attention module's current decode step.
Perturbation = Callable

_ACTIVE: dict[int, Perturbation] = {}  # id(attention module) -> its corruption


def register(module: nn.Module, perturbation: Perturbation) -> None:
    if id(module) in _ACTIVE:
        raise RuntimeError(f"{type(module).__name__} already has an attention corruption; nest at most one inject_drift per model.")
    _ACTIVE[id(module)] = perturbation


def unregister(module: nn.Module) -> None:
    _ACTIVE.pop(id(module), None)


def of(module: nn.Module) -> Perturbation | None:
    """The corruption of ``module``'s decode-step logits, or ``None``."""
    return _ACTIVE.get(id(module))
