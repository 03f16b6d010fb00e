"""Steering (spec section 3): bias the pre-softmax logits of image keys toward the anchor.

The default "logprior" mode adds ``α · log(w + ε)`` to every head's logits of the image keys of
a gated (row, layer); text keys are untouched and the softmax runs over all keys as usual. The
bias is built once per prompt and applied as an additive attention mask, so the original
attention kernel does the work.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .adapters import ImageLayout


def logprior(weights: torch.Tensor, layout: ImageLayout, alpha: float, eps: float) -> torch.Tensor:
    """``α · log(w + ε)`` placed at each row's image-key positions of the prefill, ``[B, P]`` float32.

    Computed in float32: ``ε = 1e-6`` would underflow in fp16/bf16.
    """
    values = alpha * torch.log(weights.float() + eps) * layout.valid.to(weights.device)
    out = torch.zeros(layout.batch_size, layout.prefill_length, device=weights.device)
    return out.scatter_add_(1, layout.positions.to(weights.device), values)


def add_key_bias(
    attention_mask: torch.Tensor | None, bias: torch.Tensor, kv_length: int, dtype: torch.dtype
) -> torch.Tensor:
    """Fold a per-row bias of the prefill keys ``[B, P]`` into an attention mask over ``kv_length``
    keys, of any transformers format (``None``, boolean "attend" mask, or additive float mask), as
    an additive float mask; keys generated after the prefill get no bias."""
    bias = F.pad(bias, (0, kv_length - bias.shape[-1]))[:, None, None, :]
    if attention_mask is None:
        return bias.to(dtype)
    mask = attention_mask[..., :kv_length]
    lowest = torch.finfo(dtype).min
    if mask.dtype == torch.bool:
        combined = torch.where(mask, bias, lowest)
    else:
        combined = (mask.float() + bias).clamp_min(lowest)
    return combined.to(dtype)
