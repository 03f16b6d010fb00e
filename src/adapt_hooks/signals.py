"""Per-step attention telemetry (docs/method.md: the drift signals and AMC): image attention of the new query,
visual mass, concentration, change rate and Anchor-Modulated Concentration.

Everything here is pure tensor maths on the device, batched over rows, with no host sync.
"""

from __future__ import annotations

import torch

TINY = 1e-30


def attention_logits(
    query: torch.Tensor,
    key: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    softcap: float | None = None,
) -> torch.Tensor:
    """Pre-softmax attention logits of a single new query over all keys, ``[B, H_kv, G, kv]``
    float32, masked (``-inf`` or the mask's large negative value on masked keys).

    ``query`` is ``[B, H, 1, D]``, ``key`` ``[B, H_kv, kv, D]``; query head ``h`` reads kv head
    ``h // G`` (transformers' ``repeat_kv`` order), matched by one batched product without copying
    the keys. Logits that overflowed a half-precision product become the largest float32.
    """
    batch, heads, _, dim = query.shape
    kv_heads, length = key.shape[1], key.shape[2]
    groups = heads // kv_heads
    # keys times query, not query times transposed keys: a matrix-vector product per head that
    # streams the keys row by row, twice as fast on the CPU when the cache is not in cache memory
    logits = torch.bmm(key.reshape(batch * kv_heads, length, dim), query.reshape(batch * kv_heads, groups, dim).mT)
    logits = logits.view(batch, kv_heads, length, groups).transpose(-1, -2).float().mul(scaling).contiguous()
    if query.dtype != torch.float32:  # a half-precision product can overflow to inf
        logits = torch.nan_to_num(logits)
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    if attention_mask is not None:
        mask = attention_mask[..., -1:, :length]  # [B, 1 | H, 1, kv]
        if mask.shape[1] != 1:
            mask = mask.reshape(batch, kv_heads, groups, length)
        if mask.dtype == torch.bool:
            logits = torch.where(mask, logits, float("-inf"))
        else:
            logits = logits + mask
    return logits


def softmax(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over keys that stays finite: a fully masked row gets zero attention everywhere."""
    return torch.nan_to_num(torch.softmax(logits, dim=-1), nan=0.0)


def attention_probs(
    query: torch.Tensor,
    key: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    softcap: float | None = None,
) -> torch.Tensor:
    """Post-softmax attention of a single new query over all keys, ``[B, H_kv, G, kv]`` float32
    (:func:`attention_logits`, then :func:`softmax`): always finite, so that no signal turns NaN."""
    return softmax(attention_logits(query, key, attention_mask, scaling, softcap))


def rescale_prefill_(probs: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``probs`` with the first ``P`` keys multiplied (in place) by ``factor`` ``[B, 1, 1, P]``,
    then every row renormalised: ``softmax(l + log factor)`` from ``softmax(l)``, reading the keys once."""
    prefill = factor.shape[-1]
    probs[..., :prefill].mul_(factor)
    return probs / probs.sum(-1, keepdim=True).clamp_min(TINY)  # a fully masked row stays 0


def image_attention(probs: torch.Tensor, positions: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """Head-mean attention on each image key, ``[B, N]`` (0 where ``valid`` is False; ``None``
    means every slot is valid): the share of the full attention row that lands on each image token."""
    return image_attention_total(probs, positions, valid) / (probs.shape[1] * probs.shape[2])


def image_attention_total(probs: torch.Tensor, positions: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """:func:`image_attention` summed over heads instead of averaged (one kernel fewer, for the
    decode step, where only the normalised attention and the visual mass are used)."""
    image = probs.flatten(1, 2).sum(1).gather(1, positions)
    return image if valid is None else image * valid


def normalise(attention: torch.Tensor) -> torch.Tensor:
    """``â = a / Σa`` over image keys (zero rows stay zero)."""
    return attention / attention.sum(-1, keepdim=True).clamp_min(TINY)


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
