"""The monitored decode step as one pure tensor function, so it runs as a handful of kernels and
can be handed to ``torch.compile`` whole.

From the new query and the keys of one hooked layer it computes the image attention,
the anchor-modulated score and its gate, the steered attention probabilities, and (when history
is kept) the row of drift signals. No host synchronisation, no Python branching on tensor values:
the gate acts through arithmetic.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable

import torch

from . import signals


def drift_step(
    query: torch.Tensor,
    key: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    softcap: float | None,
    positions: torch.Tensor,
    valid: torch.Tensor | None,
    terms: torch.Tensor,
    threshold: torch.Tensor,
    steered: torch.Tensor,
    boost: torch.Tensor | None,
    previous: torch.Tensor | None,
    history: bool,
) -> tuple[torch.Tensor | None, torch.Tensor, tuple[torch.Tensor, ...] | None]:
    """One monitored (step, layer).

    ``terms`` ``[B, N, 2]`` holds the anchor weights (already divided by the anchor-phase AMC when
    normalising) and ones, so one batched product gives the score ``Σ â² w`` and ``HHI = Σ â²``;
    ``threshold`` ``[B, 1]`` is ``tau`` where a row may be steered and ``-inf`` elsewhere;
    ``steered`` ``[B, 1]`` counts steered steps and is updated in place.

    With a ``boost`` ``[B, P]`` (``exp`` of the log-prior bias, minus 1: ``(w + ε)^α − 1`` on the
    prefill's image keys, 0 elsewhere) the step also returns the steered probabilities
    ``[B, H_kv, G, kv]``: ``softmax(l + α log(w + ε))`` on gated rows, computed as
    ``p · (1 + gate · boost)`` renormalised, which saves a second pass over the keys. Without one
    (observing only) it returns ``None`` there. With ``history`` the returned row holds five
    ``[B, 1]`` tensors: score, visual mass, HHI, twice the change rate against ``previous`` (the
    last step's normalised attention, if any) and the gate; :attr:`DriftMonitor.history` stacks
    and scales them when read.

    Returns ``(steered probabilities, normalised attention [B, N], row)``.
    """
    probs = signals.attention_probs(query, key, attention_mask, scaling, softcap)
    attention = signals.image_attention_total(probs, positions, valid)  # head sum: H x the head mean
    mass, normalised, score, hhi, gate = gate_step(attention, terms, threshold, steered)
    if boost is not None:
        prefill = boost.shape[-1]
        factor = (boost * gate).add_(1).view(-1, 1, 1, prefill)
        probs[..., :prefill].mul_(factor)
        probs = probs / probs.sum(-1, keepdim=True).clamp_min(signals.TINY)  # a fully masked row stays 0
    row = history_row(normalised, previous, score, mass / query.shape[1], hhi, gate) if history else None
    return (probs if boost is not None else None), normalised, row


def gate_step(
    attention: torch.Tensor, terms: torch.Tensor, threshold: torch.Tensor, steered: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Score and gate image attention ``[B, N]`` (any positive scale) against the anchor ``terms``
    ``[B, N, 2]``; counts gated rows into ``steered`` in place. Returns the attention's mass, its
    normalised form ``[B, N]``, the score, the HHI and the gate (each ``[B, 1]``)."""
    mass = attention.sum(-1, keepdim=True)
    normalised = attention / mass.clamp_min(signals.TINY)
    products = torch.bmm((normalised * normalised).unsqueeze(1), terms)  # [B, 1, 2]: Σ â² w, Σ â²
    score = products[..., 0]
    gate = score < threshold
    steered.add_(gate)
    return mass, normalised, score, products[..., 1], gate


def history_row(
    normalised: torch.Tensor,
    previous: torch.Tensor | None,
    score: torch.Tensor,
    mass: torch.Tensor,
    hhi: torch.Tensor,
    gate: torch.Tensor,
) -> tuple[torch.Tensor, ...]:
    """One (step, layer) row of the history, five ``[B, 1]`` tensors: score, visual mass, HHI,
    twice the change rate against ``previous`` (none: 0) and the gate."""
    previous = normalised if previous is None else previous
    change = torch.linalg.vector_norm(normalised - previous, ord=1, dim=-1, keepdim=True)  # 2 x the TV distance
    return score, mass, hhi, change, gate


@functools.cache
def compiled_drift_step() -> Callable:
    """:func:`drift_step` through ``torch.compile``, made once per process."""
    return compiled(drift_step)


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
