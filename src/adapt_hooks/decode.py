"""The monitor's observation of one decode step as pure tensor functions, so that it runs as a
handful of kernels and can be handed to ``torch.compile`` whole.

From the new query and the keys of one hooked layer: the attention logits and probabilities, the
image attention, and (once the anchor exists) the anchor-modulated score; then the row of drift
signals the history keeps. No host synchronisation, no Python branching on tensor values.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable

import torch

from . import signals


def observe(
    query: torch.Tensor,
    key: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    softcap: float | None,
    positions: torch.Tensor,
    valid: torch.Tensor | None,
    terms: torch.Tensor | None,
    perturb: Callable | None = None,
) -> tuple[torch.Tensor, ...]:
    """One observed (step, layer).

    ``terms`` ``[B, N, 2]`` holds the anchor weights (already divided by the anchor-phase AMC when
    normalising) and ones, so that one batched product gives the score ``Σ â² w`` and
    ``HHI = Σ â²``; ``None`` during the anchor phase (no score yet). ``perturb`` edits the logits
    first: the corruption a stress test applies to this layer's kernel (see ``hooks.perturb``).

    Returns the logits and probabilities ``[B, H_kv, G, kv]``, the head-summed image attention
    ``[B, N]`` (``H`` times the head mean), its mass, its normalised form ``[B, N]``, the score
    (NaN without ``terms``) and the HHI (each ``[B, 1]``).
    """
    logits = signals.attention_logits(query, key, attention_mask, scaling, softcap)
    if perturb is not None:
        logits = perturb(logits)
    return (logits, *observe_probs(signals.softmax(logits), positions, valid, terms))


def observe_probs(
    probs: torch.Tensor, positions: torch.Tensor, valid: torch.Tensor | None, terms: torch.Tensor | None
) -> tuple[torch.Tensor, ...]:
    """:func:`observe` from probabilities the attention kernel already computed (``[B, H_kv, G,
    kv]``; the eager kernel returns them): the same results but the logits, read once."""
    probs = probs.float()
    attention = signals.image_attention_total(probs, positions, valid)
    mass = attention.sum(-1, keepdim=True)
    normalised = attention / mass.clamp_min(signals.TINY)
    if terms is None:
        score = torch.full_like(mass, float("nan"))
        hhi = normalised.square().sum(-1, keepdim=True)
    else:
        products = torch.bmm((normalised * normalised).unsqueeze(1), terms)  # [B, 1, 2]: Σ â² w, Σ â²
        score, hhi = products[..., 0], products[..., 1]
    return probs, attention, mass, normalised, score, hhi


def history_row(
    normalised: torch.Tensor,
    previous: torch.Tensor | None,
    score: torch.Tensor,
    mass: torch.Tensor,
    hhi: torch.Tensor,
    steered: torch.Tensor,
) -> tuple[torch.Tensor, ...]:
    """One (step, layer) row of the history, five ``[B, 1]`` tensors: score, visual mass, HHI,
    twice the change rate against ``previous`` (none: 0) and whether the row was steered."""
    previous = normalised if previous is None else previous
    change = torch.linalg.vector_norm(normalised - previous, ord=1, dim=-1, keepdim=True)  # 2 x the TV distance
    return score, mass, hhi, change, steered


@functools.cache
def compiled_observe() -> tuple[Callable, Callable]:
    """:func:`observe` and :func:`observe_probs` through ``torch.compile``, made once per process."""
    return compiled(observe), compiled(observe_probs)


def compiled(fn: Callable) -> Callable:
    """``fn`` through ``torch.compile`` (dynamic shapes: the key length grows every step), falling
    back to eager ``fn`` with one warning if compilation fails on this machine."""
    compiled_fn = torch.compile(fn, dynamic=True)
    state = {"fn": compiled_fn}

    def call(*args, **kwargs):
        try:
            return state["fn"](*args, **kwargs)
        except Exception as error:  # compiler missing or unsupported op: stay correct, lose speed
            if state["fn"] is fn:
                raise
            warnings.warn(
                f"adapt_hooks: torch.compile of the decode step failed ({type(error).__name__}: {error}); "
                "running it eagerly instead.",
                stacklevel=2,
            )
            state["fn"] = fn
            return fn(*args, **kwargs)

    return call
