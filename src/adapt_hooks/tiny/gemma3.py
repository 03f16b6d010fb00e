"""Tiny Gemma 3: SigLIP vision (64 px, patch 4 -> 16x16 patches, average-pooled to 8x8 = 64 image
tokens) + 4 Gemma 3 text layers, sliding, full, sliding, full, with a 16-token window (shorter than
every prompt) and ``query_pre_attn_scalar`` != ``head_dim``.

Prompts follow the real processor: each image is ``\\n\\n<start_of_image>`` + 64 soft tokens +
``<end_of_image>\\n\\n``, and ``token_type_ids`` mark the soft tokens (bidirectional at prefill).
Row 0 has one image; row 1 has a pan-and-scan image: the original, then two crops, each its own
image, so a batch of 2 mixes one and three grids.
"""

from __future__ import annotations

import torch
from torch import nn

from ._common import BOS, FIRST_TEXT_ID, IMAGE, PAD, TEXT, VISION_END, VISION_START, left_pad, text_tokens

IMAGE_SIZE, PATCH, TOKENS_PER_IMAGE = 64, 4, 64
SLIDING_WINDOW = 16
LAYER_TYPES = ["sliding_attention", "full_attention", "sliding_attention", "full_attention"]
#: The text id that stands in for the ``\n\n`` and word tokens around an image.
NEWLINES = FIRST_TEXT_ID
#: Pan-and-scan crops of row b's image (cycled for larger batches); 0 = no pan-and-scan.
CROPS = (0, 2)


def config():
    from transformers import Gemma3Config

    vision = dict(
        model_type="siglip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, image_size=IMAGE_SIZE, patch_size=PATCH,
    )
    text = dict(
        TEXT, head_dim=8, query_pre_attn_scalar=16, sliding_window=SLIDING_WINDOW, layer_types=LAYER_TYPES,
        rope_parameters={
            "full_attention": {"rope_type": "default", "rope_theta": 10000.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
        },
    )
    return Gemma3Config(
        vision_config=vision, text_config=text, mm_tokens_per_image=TOKENS_PER_IMAGE,
        image_token_index=IMAGE, boi_token_index=VISION_START, eoi_token_index=VISION_END, pad_token_id=PAD,
    )


def prepare(model: nn.Module) -> None:
    """Fill the zero-initialised multimodal projection so that the pixels change the logits."""
    weight = model.model.multi_modal_projector.mm_input_projection_weight
    with torch.no_grad():
        weight.normal_(0.0, weight.shape[0] ** -0.5, generator=torch.Generator().manual_seed(0))


def _image(n_tokens: int) -> list[int]:
    """The processor's full image sequence: ``\\n\\n<boi>`` + soft tokens + ``<eoi>\\n\\n``."""
    return [NEWLINES, VISION_START] + [IMAGE] * n_tokens + [VISION_END, NEWLINES]


def _image_prompt(crops: int, n_tokens: int) -> list[int]:
    """One image as the processor inserts it: alone, or with its pan-and-scan crops after it."""
    if not crops:
        return _image(n_tokens)
    words = [FIRST_TEXT_ID + 1, FIRST_TEXT_ID + 2]  # "Here is the original image", "and here are some crops"
    crop_images = [token for _ in range(crops) for token in _image(n_tokens)]
    return words[:1] + _image(n_tokens) + words[1:] + crop_images


def inputs(model, batch: int, images: bool, generator: torch.Generator) -> dict[str, torch.Tensor]:
    n_tokens = model.config.mm_tokens_per_image
    size = model.config.vision_config.image_size
    rows, n_images = [], 0
    for b in range(batch):
        crops = CROPS[b % len(CROPS)]
        image = _image_prompt(crops, n_tokens) if images else []
        n_images += 1 + crops if images else 0
        rows.append([BOS] + image + text_tokens(b, generator))
    out = left_pad(rows)
    out["token_type_ids"] = (out["input_ids"] == IMAGE).long()
    if images:
        out["pixel_values"] = torch.randn(n_images, 3, size, size, generator=generator)
    return out
