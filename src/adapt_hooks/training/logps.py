"""Sequence log-probabilities of a ``[chosen; rejected]`` VLM batch, summed over response tokens.

One forward of the concatenated batch (every processor key carried through: ``pixel_values``,
``image_grid_thw``, ``pixel_attention_mask``, ``image_sizes``...). Works under autocast and
gradient checkpointing; reference log-probabilities come from a frozen model or from the same
PEFT model with its adapter disabled.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import NamedTuple

import torch
from torch import nn

#: Batch keys that belong to the loss, not to the model's forward.
LOSS_KEYS = ("response_mask",)


class SequenceLogps(NamedTuple):
    """Summed response log-probabilities ``[B]`` of each half, and the chosen half's mean token NLL ``[B]``."""

    chosen: torch.Tensor
    rejected: torch.Tensor
    chosen_nll: torch.Tensor


def token_logps(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """``log p(x_t | x_<t)`` for t = 1..L−1, ``[B, L−1]`` float32, without a vocabulary-sized softmax copy."""
    logits = logits[:, :-1].float()
    targets = input_ids[:, 1:, None]
    return (logits.gather(-1, targets)[..., 0] - torch.logsumexp(logits, -1))


def sequence_logps(model: nn.Module, batch: dict[str, torch.Tensor]) -> SequenceLogps:
    """One forward of ``batch`` (rows ``[chosen; rejected]``, ``response_mask`` marking response
    tokens) and the summed log-probability of each row's response, split into halves."""
    mask = batch.get("response_mask")
    if mask is None:
        raise ValueError("The batch needs a `response_mask` marking the response tokens (see VAGDPOCollator).")
    rows = batch["input_ids"].shape[0]
    if rows % 2:
        raise ValueError(f"A [chosen; rejected] batch has an even number of rows, got {rows}.")
    inputs = {name: value for name, value in batch.items() if name not in LOSS_KEYS}
    logits = model(**inputs, use_cache=False).logits
    response = mask[:, 1:].to(logits.device).float()
    logps = (token_logps(logits, batch["input_ids"].to(logits.device)) * response).sum(-1)
    chosen, rejected = logps.chunk(2)
    chosen_tokens = response.chunk(2)[0].sum(-1).clamp_min(1)
    return SequenceLogps(chosen, rejected, -chosen / chosen_tokens)


@torch.no_grad()
def reference_logps(model: nn.Module, batch: dict[str, torch.Tensor], *, disable_adapter: bool = False) -> SequenceLogps:
    """:func:`sequence_logps` of a frozen reference: ``model`` itself, or with
    ``disable_adapter=True`` the base model under a PEFT model's adapter."""
    if disable_adapter and not hasattr(model, "disable_adapter"):
        raise ValueError("disable_adapter=True needs a PEFT model (one with .disable_adapter()).")
    with model.disable_adapter() if disable_adapter else nullcontext():
        return sequence_logps(model, batch)
