"""Tiny Mistral Large 4: Mistral 3's Pixtral vision and prompts (one token per 8 px, ``[IMG]`` rows
ended by ``[IMG_BREAK]``, the last by ``[IMG_END]``) and a DSA decoder: MLA attention over a latent
KV cache, a lightning indexer that keeps the ``index_topk`` best keys of every query, layer 2
reusing layer 1's pick (``indexer_types``), layer 3 without RoPE, layers 1-3 MoE.

The battery's model keeps 64 keys, more than its sequences hold, so every key is picked: with a
pick that leaves keys out, the model's own cached decoding differs from one full forward over the
same tokens (by up to 6e-3 in the logits at ``index_topk=32``, without any guard), which the PAI and
VCD reference checks rely on. ``config(32)`` (the prompts hold 37 and 42 tokens) leaves keys out
of the late prefill queries and of every decode step; tests/test_family_mistral_large4.py checks
that the guard attends to the same keys there.
"""

from __future__ import annotations

import torch
from torch import nn

from ._common import IMAGE, PAD, TEXT
from .mistral3 import PATCH, MERGE, inputs  # noqa: F401  (the prompts are Mistral 3's)

INDEX_TOPK = 64


def config(index_topk: int = INDEX_TOPK):
    from transformers import MistralLarge4Config, PixtralVisionConfig

    vision = PixtralVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, head_dim=8,
        image_size=64, patch_size=PATCH,
    )
    text = dict(
        TEXT, model_type="mistral_large4_text", num_key_value_heads=4, moe_intermediate_size=16, n_routed_experts=4,
        num_experts_per_tok=2, kv_lora_rank=16, qk_rope_head_dim=4, qk_nope_head_dim=4, v_head_dim=8,
        index_topk=index_topk, index_head_dim=8, index_n_heads=2, index_topk_freq=2,
    )
    return MistralLarge4Config(
        vision_config=vision, text_config=text, image_token_index=IMAGE, spatial_merge_size=MERGE,
        vision_feature_layer=-1, pad_token_id=PAD,
    )


def prepare(model: nn.Module) -> None:
    """Give the zero-initialised position-dependent query scaling (and LeRoPE) of the attention
    and the indexer random values, so that it acts."""
    from transformers.models.mistral_large4.modeling_mistral_large4 import MistralLarge4TextSoftmaxScaling

    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, MistralLarge4TextSoftmaxScaling):
                module.scale.normal_(0.0, 0.1, generator=generator)
