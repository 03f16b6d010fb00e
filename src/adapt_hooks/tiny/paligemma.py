"""Tiny PaliGemma: SigLIP vision (48 px, patch 6 -> 8x8 = 64 image tokens) + 4 Gemma text layers
(``config("gemma2")``: PaliGemma 2's Gemma 2 text, sliding and full layers with a 16-token window,
attention-logit softcapping and ``query_pre_attn_scalar`` != ``head_dim``; eager attention only,
since sdpa has no softcapping).

Prompts follow the real processor: the ``<image>`` tokens of every image come first, then ``<bos>``,
the prompt and ``\\n``; ``token_type_ids`` are 0 over the whole prompt (a bidirectional prefix).
Row 0 has one image; row 1 has two, so a batch of 2 mixes one and two grids.
"""

from __future__ import annotations

import torch

from ._common import BOS, FIRST_TEXT_ID, IMAGE, PAD, TEXT, left_pad, text_tokens

IMAGE_SIZE, PATCH = 48, 6
#: The text id that stands in for the ``\n`` closing the prompt.
NEWLINE = FIRST_TEXT_ID
#: Images of row b (cycled for larger batches).
IMAGES_PER_ROW = (1, 2)


def config(text_model_type: str = "gemma"):
    from transformers import PaliGemmaConfig

    vision = dict(
        model_type="siglip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, image_size=IMAGE_SIZE, patch_size=PATCH,
    )
    text = dict(TEXT, model_type=text_model_type, head_dim=8)
    if text_model_type == "gemma2":
        text.update(query_pre_attn_scalar=16, sliding_window=16, attn_logit_softcapping=5.0)
    return PaliGemmaConfig(
        vision_config=vision, text_config=text, image_token_index=IMAGE, vocab_size=TEXT["vocab_size"],
        projection_dim=TEXT["hidden_size"], hidden_size=TEXT["hidden_size"], pad_token_id=PAD,
    )


def inputs(model, batch: int, images: bool, generator: torch.Generator) -> dict[str, torch.Tensor]:
    vision = model.config.vision_config
    per_image = (vision.image_size // vision.patch_size) ** 2
    counts = [IMAGES_PER_ROW[b % len(IMAGES_PER_ROW)] if images else 0 for b in range(batch)]
    rows = [[IMAGE] * (per_image * n) + [BOS] + text_tokens(b, generator) + [NEWLINE] for b, n in enumerate(counts)]
    out = left_pad(rows)
    out["token_type_ids"] = torch.zeros_like(out["input_ids"])
    if images:
        out["pixel_values"] = torch.randn(sum(counts), 3, vision.image_size, vision.image_size, generator=generator)
    return out
