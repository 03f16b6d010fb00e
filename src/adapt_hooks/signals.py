"""Per-step attention telemetry (spec sections 0 and 2): image attention of the new query,
visual mass, concentration, change rate and Anchor-Modulated Concentration.

Everything here is pure tensor maths on the device, batched over rows, with no host sync.
"""

from __future__ import annotations

import torch
from einops import rearrange

_TINY = 1e-30


def attention_probs(
    query: torch.Tensor,
    key: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    softcap: float | None = None,
) -> torch.Tensor:
    """Post-softmax attention of a single new query over all keys, ``[B, H_kv, G, kv]`` float32.

    ``query`` is ``[B, H, 1, D]``, ``key`` ``[B, H_kv, kv, D]``; query head ``h`` reads kv head
    ``h // G`` (transformers' ``repeat_kv`` order), matched without copying the keys.
    """
    heads = query.shape[1]
    kv_heads = key.shape[1]
    grouped = rearrange(query, "b (kv g) 1 d -> b kv g d", kv=kv_heads)
    logits = torch.matmul(grouped, key.transpose(-1, -2)).float() * scaling  # [B, H_kv, G, kv]
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    if attention_mask is not None:
        mask = attention_mask[..., -1:, : key.shape[-2]]  # [B, 1 | H, 1, kv]
        if mask.shape[1] != 1:
            mask = rearrange(mask, "b (kv g) 1 k -> b kv g k", kv=kv_heads, g=heads // kv_heads)
        if mask.dtype == torch.bool:
            logits = logits.masked_fill(~mask, float("-inf"))
        else:
            logits = logits + mask.float()
    return torch.softmax(logits, dim=-1)


def image_attention(probs: torch.Tensor, positions: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Head-mean attention on each image key, ``[B, N]`` (0 where ``valid`` is False): the share of
    the full attention row that lands on each image token."""
    return probs.mean(dim=(1, 2)).gather(1, positions) * valid


def normalise(attention: torch.Tensor) -> torch.Tensor:
    """``â = a / Σa`` over image keys (zero rows stay zero)."""
    return attention / attention.sum(-1, keepdim=True).clamp_min(_TINY)


def concentration(normalised: torch.Tensor) -> torch.Tensor:
    """Herfindahl index ``HHI = Σ â²``: drops as attention spreads."""
    return normalised.square().sum(-1)


def change_rate(normalised: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
    """Total-variation distance ``‖â_t − â_{t−1}‖₁ / 2``: drops as attention becomes rigid."""
    return (normalised - previous).abs().sum(-1) * 0.5


def amc(attention: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
    """Anchor-Modulated Concentration ``S_AMC(a ‖ w) = Σ a² w / (Σ a)²`` (paper Eq. 6), over the last dim."""
    return amc_normalised(normalise(attention), anchor)


def amc_normalised(normalised: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
    """``S_AMC`` of attention already normalised to sum 1: ``Σ â² w``."""
    return (normalised.square() * anchor).sum(-1)
