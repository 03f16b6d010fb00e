"""Tiny Gemma 4 and Gemma 4 Unified: variable-size images and the Gemma 4 text decoder.

Vision: 4 px patches pooled (``gemma4``: a 2-layer encoder, then 2x2 average pooling) or merged
(``gemma4_unified``: the processor merges 2x2 patches into one 8 px model patch) into one soft
token per 2x2 block, at most 16 soft tokens per image. Row 0 has one 8x6-patch image (a 4x3 grid);
row 1 has a 4x8 and a 6x6 image (2x4 and 3x3 grids), so a batch mixes grid shapes and image counts.
``pixel_values`` and ``image_position_ids`` are padded per image as the processors pad them.

Text: 4 layers, sliding (16-token window, shorter than every prompt), full, sliding, full; the last
two share the KV of layers 0 and 1 (``num_kv_shared_layers=2``). Full layers have their own head
dim (8, sliding 4: with RMS-normed queries and keys at scaling 1, small heads keep the random
attention from peaking) and keys as values (``attention_k_eq_v``); the sliding layers attend
bidirectionally within each image's soft tokens (``mm_token_type_ids``); ``gemma4`` also has
per-layer input embeddings. Prompts follow the processors: ``<boi>`` + the image's soft tokens +
``<eoi>`` per image.
"""

from __future__ import annotations

import torch
from torch import nn

from ._common import BOS, IMAGE, PAD, TEXT, UNK, VIDEO, VISION_END, VISION_START, left_pad, text_tokens

PATCH, POOLING, MAX_SOFT_TOKENS = 4, 2, 16
#: Each row's images, ``(height, width)`` in patches (cycled for larger batches).
IMAGES = (((8, 6),), ((4, 8), (6, 6)))
LAYER_TYPES = ["sliding_attention", "full_attention", "sliding_attention", "full_attention"]
TEXT_CONFIG = dict(
    TEXT, head_dim=4, global_head_dim=8, num_global_key_value_heads=1, attention_k_eq_v=True, sliding_window=16,
    layer_types=LAYER_TYPES, num_kv_shared_layers=2, use_bidirectional_attention="vision", final_logit_softcapping=30.0,
)
TOKENS = dict(
    image_token_id=IMAGE, video_token_id=VIDEO, boi_token_id=VISION_START, eoi_token_id=VISION_END, audio_token_id=UNK,
    pad_token_id=PAD,
)


def config(model_type: str = "gemma4"):
    from transformers import Gemma4Config

    if model_type == "gemma4_unified":
        from transformers import Gemma4UnifiedConfig

        vision = dict(patch_size=PATCH, pooling_kernel_size=POOLING, mm_embed_dim=32, mm_posemb_size=16, output_proj_dims=32)
        return Gemma4UnifiedConfig(text_config=TEXT_CONFIG, vision_config=vision, audio_config=None, **TOKENS)
    text = dict(TEXT_CONFIG, hidden_size_per_layer_input=8, vocab_size_per_layer_input=TEXT["vocab_size"])
    vision = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
        head_dim=8, patch_size=PATCH, pooling_kernel_size=POOLING, position_embedding_size=16,
    )
    return Gemma4Config(text_config=text, vision_config=vision, audio_config=None, **TOKENS)


def prepare(model: nn.Module) -> None:
    """Fill the patch position embeddings, initialised to ones (all positions alike), so that
    where a patch lies changes the soft tokens."""
    vision = getattr(model.model, "vision_tower", None)
    if vision is not None:
        table = vision.patch_embedder.position_embedding_table
        with torch.no_grad():
            table.normal_(0.0, 1.0, generator=torch.Generator().manual_seed(0))


def _image(height: int, width: int, merged: bool, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One image's padded patches and ``(x, y)`` positions (``-1`` for padding), as the processor
    gives them: row-major ``PATCH`` px patches, or (``merged``) row-major 2x2-merged model patches."""
    k = POOLING if merged else 1
    rows, cols = height // k, width // k
    length = MAX_SOFT_TOKENS * (1 if merged else POOLING**2)
    xs, ys = torch.meshgrid(torch.arange(cols), torch.arange(rows), indexing="xy")
    positions = torch.full((length, 2), -1)
    positions[: rows * cols] = torch.stack([xs, ys], -1).reshape(-1, 2)
    patches = torch.zeros(length, 3 * (PATCH * k) ** 2)
    patches[: rows * cols] = torch.rand(rows * cols, patches.shape[1], generator=generator)
    return patches, positions


def inputs(model, batch: int, images: bool, generator: torch.Generator) -> dict[str, torch.Tensor]:
    merged = model.config.model_type == "gemma4_unified"
    rows, pixels, positions = [], [], []
    for b in range(batch):
        image: list[int] = []
        for height, width in IMAGES[b % len(IMAGES)] if images else ():
            image += [VISION_START] + [IMAGE] * (height * width // POOLING**2) + [VISION_END]
            patches, xy = _image(height, width, merged, generator)
            pixels.append(patches)
            positions.append(xy)
        rows.append([BOS] + image + text_tokens(b, generator))
    out = left_pad(rows)
    out["mm_token_type_ids"] = (out["input_ids"] == IMAGE).long()
    if images:
        out["pixel_values"] = torch.stack(pixels)
        out["image_position_ids"] = torch.stack(positions)
    return out
