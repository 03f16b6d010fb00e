"""Tiny Kimi K2.5: a 2-layer MoonViT-like tower (4 px patches, 2x2 merge kernel) and a 3-layer
DeepSeek-V3 text model (multi-head latent attention; layer 0 dense, layers 1-2 MoE).

Prompts follow the processor and chat template: each image is ``<|media_begin|>image<|media_content|>``
+ ``h * w / 4`` ``<|media_pad|>`` tokens + ``<|media_end|>``, with ``pixel_values`` the images' patches
stacked ``(n_patches, 3, 4, 4)`` and ``image_grid_thw`` their ``(1, h, w)`` in patches. Row 0 has one
image of 4 x 8 patches (a 2x4 grid); row 1 has two, of 8 x 4 and 4 x 4 patches (4x2 and 2x2).
"""

from __future__ import annotations

import torch
from torch import nn

from ._common import BOS, FIRST_TEXT_ID, IMAGE, PAD, TEXT, VIDEO, VISION_END, VISION_START, left_pad, text_tokens

PATCH = 4
#: ``<|media_content|>`` and the word ``image`` of the media header.
MEDIA_CONTENT, WORD_IMAGE = 8, FIRST_TEXT_ID
#: ``image_grid_thw`` (in patches) of each image of row b (cycled for larger batches).
IMAGE_GRIDS = (((1, 4, 8),), ((1, 8, 4), (1, 4, 4)))
#: Multi-head latent attention (low-rank q and kv, a rotary and a non-rotary part) and 4 routed experts.
MLA_MOE = dict(
    q_lora_rank=16, kv_lora_rank=16, qk_rope_head_dim=4, qk_nope_head_dim=8, v_head_dim=8, n_routed_experts=4,
    num_experts_per_tok=2, n_shared_experts=1, moe_intermediate_size=16, first_k_dense_replace=1, n_group=1, topk_group=1,
)


def config():
    from transformers import Kimi_K25Config

    text = dict(TEXT, model_type="deepseek_v3", num_hidden_layers=3, num_key_value_heads=4, **MLA_MOE)
    vision = dict(
        patch_size=PATCH, pos_emb_height=8, pos_emb_width=8, num_attention_heads=4, num_hidden_layers=2, hidden_size=32,
        intermediate_size=64, merge_kernel_size=[2, 2],
    )
    return Kimi_K25Config(
        text_config=text, vision_config=vision, projection_hidden_size=vision["hidden_size"], image_token_id=IMAGE,
        video_token_id=VIDEO, vision_start_token_id=VISION_START, vision_end_token_id=VISION_END, pad_token_id=PAD,
    )


def inputs(model: nn.Module, batch: int, images: bool, generator: torch.Generator) -> dict[str, torch.Tensor]:
    kernel_h, kernel_w = model.config.vision_config.merge_kernel_size
    rows, pixels, grids = [], [], []
    for b in range(batch):
        image: list[int] = []
        if images:
            for t, h, w in IMAGE_GRIDS[b % len(IMAGE_GRIDS)]:
                image += [VISION_START, WORD_IMAGE, MEDIA_CONTENT] + [IMAGE] * (h * w // (kernel_h * kernel_w)) + [VISION_END]
                pixels.append(torch.randn(t * h * w, 3, PATCH, PATCH, generator=generator))
                grids.append((t, h, w))
        rows.append([BOS] + image + text_tokens(b, generator))
    out = left_pad(rows)
    if pixels:
        out["pixel_values"] = torch.cat(pixels)
        out["image_grid_thw"] = torch.tensor(grids)
    return out
