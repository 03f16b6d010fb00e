"""Adapter registry, keyed by ``model.config.model_type``."""

from __future__ import annotations

from torch import nn

from .base import Adapter, Grid, GridSpec, ImageLayout
from .llava import LlavaAdapter
from .qwen2_vl import Qwen2VLAdapter

_REGISTRY: dict[str, Adapter] = {}


def register_adapter(adapter: Adapter, *, overwrite: bool = False) -> Adapter:
    """Make ``guard`` support every ``model_type`` in ``adapter.model_types``."""
    if not adapter.model_types:
        raise ValueError(f"{type(adapter).__name__} declares no model_types.")
    for model_type in adapter.model_types:
        if model_type in _REGISTRY and not overwrite:
            raise ValueError(f"An adapter for {model_type!r} is already registered; pass overwrite=True to replace it.")
    for model_type in adapter.model_types:
        _REGISTRY[model_type] = adapter
    return adapter


def supported_models() -> list[str]:
    """The ``model_type`` values ``guard`` supports."""
    return sorted(_REGISTRY)


def get_adapter(model: nn.Module) -> Adapter:
    """The adapter for ``model``, or a ``ValueError`` naming what is supported."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in _REGISTRY:
        raise ValueError(
            f"adapt-hooks has no adapter for model_type {model_type!r} ({type(model).__name__}). "
            f"Supported model types: {', '.join(supported_models())}. "
            "Register one with adapt_hooks.register_adapter(...)."
        )
    return _REGISTRY[model_type]


register_adapter(LlavaAdapter())
register_adapter(Qwen2VLAdapter())

__all__ = ["Adapter", "Grid", "GridSpec", "ImageLayout", "get_adapter", "register_adapter", "supported_models"]
