"""Steering (spec section 3): pull a drifted (row, layer) back toward the anchor.

``"logprior"`` (default) adds ``α · log(w + ε)`` to every head's pre-softmax logits of the image
keys; the bias is built once per prompt and applied in the decode step as the equivalent
renormalised product (see :func:`adapt_hooks.decode.drift_step`). ``"blend"`` and ``"redistribute"`` edit the post-softmax
probabilities of the image keys. Everything is a pure tensor function, gated per row on the device.
"""

from __future__ import annotations

import torch

from .layout import ImageLayout

MODES = ("logprior", "blend", "redistribute")


def logprior(weights: torch.Tensor, layout: ImageLayout, alpha: float, eps: float) -> torch.Tensor:
    """``α · log(w + ε)`` placed at each row's image-key positions of the prefill, ``[B, P]`` float32.

    Computed in float32: ``ε = 1e-6`` would underflow in fp16/bf16.
    """
    values = alpha * torch.log(weights.float() + eps) * layout.valid.to(weights.device)
    out = torch.zeros(layout.batch_size, layout.prefill_length, device=weights.device)
    return out.scatter_add_(1, layout.positions.to(weights.device), values)


def blend_gain(hhi: torch.Tensor, hhi_anchor: torch.Tensor) -> torch.Tensor:
    """``g = clamp(0.4 · clamp(1 − HHI_t / HHI_anchor, 0, 1), 0, 1)``: how much to blend."""
    return (0.4 * (1 - hhi / hhi_anchor.clamp_min(1e-30)).clamp(0, 1)).clamp(0, 1)


def _edit_image_keys(probs: torch.Tensor, positions: torch.Tensor, valid: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """``probs`` ``[B, H_kv, G, kv]`` with its image-key entries replaced by ``new`` ``[B, H_kv, G, N]``."""
    index = positions[:, None, None, :].expand_as(new)
    delta = (new - probs.gather(-1, index)) * valid[:, None, None, :]
    return probs.scatter_add(-1, index, delta)  # padding slots add 0, so duplicates are harmless


def blend(
    probs: torch.Tensor, positions: torch.Tensor, valid: torch.Tensor, target: torch.Tensor, gain: torch.Tensor
) -> torch.Tensor:
    """Per head, move the image-key distribution toward ``target`` (``[B, N]``, sums to 1 per row):
    ``a ← m · ((1 − g) â + g · target)``, keeping each head's image mass ``m`` (so rows still sum
    to 1); ``gain`` ``[B]`` is 0 on rows that are not steered."""
    image = probs.gather(-1, positions[:, None, None, :].expand(*probs.shape[:-1], -1)) * valid[:, None, None, :]
    mass = image.sum(-1, keepdim=True)
    g = gain[:, None, None, None]
    new = (1 - g) * image + g * mass * target[:, None, None, :]
    return _edit_image_keys(probs, positions, valid, new)


def redistribute(probs: torch.Tensor, positions: torch.Tensor, valid: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Per head, zero the image keys outside ``keep`` (``[B, N]`` bool; all True on rows that are not
    steered) and give their mass back to the kept image keys in proportion; clamp to [0, 1]."""
    image = probs.gather(-1, positions[:, None, None, :].expand(*probs.shape[:-1], -1)) * valid[:, None, None, :]
    kept = image * keep[:, None, None, :]
    removed = (image - kept).sum(-1, keepdim=True)
    total = kept.sum(-1, keepdim=True)
    new = torch.where(total > 0, kept + removed * kept / total.clamp_min(1e-30), image).clamp(0, 1)
    return _edit_image_keys(probs, positions, valid, new)
