"""The monitored decode step as one pure tensor function, so it runs as a handful of kernels and
can be handed to ``torch.compile`` whole.

From the new query and the keys of one hooked layer it computes the head-mean image attention,
the anchor-modulated score and its gate, the steered attention probabilities, and (when history
is kept) the row of drift signals. No host synchronisation, no Python branching on tensor values:
the gate acts through arithmetic.
"""

from __future__ import annotations

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
    mass = attention.sum(-1, keepdim=True)
    normalised = attention / mass.clamp_min(signals.TINY)
    terms = torch.bmm((normalised * normalised).unsqueeze(1), terms)  # [B, 1, 2]
    score = terms[..., 0]  # [B, 1]
    gate = score < threshold
    steered.add_(gate)
    if boost is not None:
        prefill = boost.shape[-1]
        factor = (boost * gate).add_(1).view(-1, 1, 1, prefill)
        probs[..., :prefill].mul_(factor)
        probs = probs / probs.sum(-1, keepdim=True).clamp_min(signals.TINY)  # a fully masked row stays 0
    row = None
    if history:
        previous = normalised if previous is None else previous
        change = torch.linalg.vector_norm(normalised - previous, ord=1, dim=-1, keepdim=True)  # 2 x the TV distance
        row = (score, mass / query.shape[1], terms[..., 1], change, gate)
    return (probs if boost is not None else None), normalised, row


_COMPILED: list[Callable] = []


def compiled_drift_step() -> Callable:
    """:func:`drift_step` through ``torch.compile``, made once per process."""
    if not _COMPILED:
        _COMPILED.append(compiled(drift_step))
    return _COMPILED[0]


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
