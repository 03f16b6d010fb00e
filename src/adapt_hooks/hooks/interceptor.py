"""The attention function a guard registers with transformers' attention dispatch.

Prefill calls, un-hooked layers and inactive guards go straight to the model's original
implementation. A decode step (one new query per row) of a hooked layer is observed; observing
alone still hands the step to the original kernel (so the output is bit-identical) and reads the
probabilities the kernel returns when it returns them (eager), while a steering guard attends
with the probabilities it has just computed and steered, which reads the keys once instead of twice.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Protocol

import torch
from torch import nn

from .. import compat
from ..compat import AttentionFn


class StepHandler(Protocol):
    """What the interceptor asks of the guard that registered it."""

    @property
    def observing(self) -> bool: ...

    @property
    def main_rows(self) -> int | None: ...

    def edits(self, slot: int) -> bool: ...

    def decode_step(
        self, slot: int, query: torch.Tensor, key: torch.Tensor, attention_mask: torch.Tensor | None,
        scaling: float, softcap: float | None, probs: torch.Tensor | None = None,
    ) -> torch.Tensor | None: ...

#: Interceptors currently registered, by their registered name (lets nested guards find the
#: implementation underneath an outer guard).
ACTIVE: dict[str, Interceptor] = {}

_UNSUPPORTED = ("flash", "flex", "paged")


def resolve_base(implementation: str | None, module: nn.Module) -> tuple[AttentionFn, Callable | None]:
    """The attention function and mask builder that ``implementation`` means for ``module``."""
    if implementation in ACTIVE:
        outer = ACTIVE[implementation]
        return outer.base, outer.mask_builder
    if implementation is None or implementation == "eager":
        eager = compat.eager_attention(module)
        if eager is None:
            raise ValueError(
                f"{type(module).__name__} has no eager_attention_forward in its module; load the model with "
                "attn_implementation='sdpa'."
            )
        return eager, compat.mask_function("eager")
    if any(word in implementation for word in _UNSUPPORTED):
        raise ValueError(
            f"attn_implementation={implementation!r} is not supported by adapt-hooks (it needs the attention "
            "probabilities of each decode step). Use model.set_attn_implementation('sdpa') or 'eager'."
        )
    function = compat.attention_function(implementation)
    if function is None:
        raise ValueError(f"attn_implementation={implementation!r} is not registered with transformers.")
    return function, compat.mask_function(implementation)


def eager_under_compile(fn: Callable) -> Callable:
    """``fn``, except that inside a ``torch.compile`` trace it runs eagerly at a graph break: the
    guard's per-prompt state lives in Python, which a compiled graph would freeze. Outside a trace
    it costs one check, not the ``torch.compiler.disable`` wrapper."""
    eager = torch.compiler.disable(fn)

    @functools.wraps(fn)
    def call(*args, **kwargs):
        return eager(*args, **kwargs) if torch.compiler.is_compiling() else fn(*args, **kwargs)

    return call


class Interceptor:
    """Callable registered under a unique name for the lifetime of one guard.

    Inside a ``torch.compile``'d forward (``generate`` compiles it with a static cache on GPU) it
    runs eagerly, at a graph break: the guard's per-prompt state lives in Python, which a compiled
    graph would freeze."""

    def __init__(self, guard: StepHandler, base: AttentionFn, mask_builder: Callable | None, slots: dict[int, int]) -> None:
        self.guard = guard
        self.base = base
        self.mask_builder = mask_builder
        self.slots = slots  # id(attention module) -> hooked-layer slot

    @eager_under_compile
    def __call__(
        self,
        module: nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        attention_mask, kwargs = compat.index_mask(query, key, attention_mask, kwargs)  # sparse (DSA) attention's pick
        slot = self.slots.get(id(module))
        if slot is None or query.shape[2] != 1 or not self.guard.observing:
            return self.base(module, query, key, value, attention_mask, **kwargs)
        scaling = kwargs.get("scaling")
        scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
        rows = self.guard.main_rows  # contrast rows after the user's go to the model's kernel untouched
        main = slice(None) if rows is None else slice(None, rows)
        mask = None if attention_mask is None else attention_mask[main]
        if not self.guard.edits(slot):  # observe only: the kernel's own output, and its weights when it returns them
            out, weights = self.base(module, query, key, value, attention_mask, **kwargs)
            probs = weights[main] if weights is not None and not kwargs.get("dropout") and weights.shape[-2] == 1 else None
            with torch.no_grad():
                self.guard.decode_step(slot, query[main], key[main], mask, scaling, kwargs.get("softcap"), probs)
            return out, weights
        with torch.no_grad():
            steered = self.guard.decode_step(slot, query[main], key[main], mask, scaling, kwargs.get("softcap"))
        if steered is None:
            return self.base(module, query, key, value, attention_mask, **kwargs)
        out, weights = attend(steered, value[main], query.dtype)
        if rows is None:
            return out, weights
        rest = slice(rows, None)
        rest_mask = None if attention_mask is None else attention_mask[rest]
        rest_out, rest_weights = self.base(module, query[rest], key[rest], value[rest], rest_mask, **kwargs)
        weights = None if rest_weights is None else torch.cat([weights.to(rest_weights.dtype), rest_weights])
        return torch.cat([out, rest_out]), weights


def attend(probs: torch.Tensor, value: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Output ``[B, 1, H, D]`` and weights ``[B, H, 1, kv]`` of probabilities ``[B, H_kv, G, kv]``."""
    batch, kv_heads, groups, length = probs.shape
    probs = probs.to(dtype)
    out = torch.bmm(probs.view(batch * kv_heads, groups, length), value.reshape(batch * kv_heads, length, -1))
    heads = kv_heads * groups
    return out.view(batch, heads, 1, -1).transpose(1, 2), probs.view(batch, heads, 1, length)
