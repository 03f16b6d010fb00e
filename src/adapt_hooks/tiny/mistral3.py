"""Tiny Mistral 3: Pixtral vision (patch 4, 2x2 merge -> one token per 8 px) + Mistral text.
Row 0's image is 48x32 px (a 6x4 token grid), row 1's 32x56 px (4x7), each written as the
processor does: a row of ``[IMG]`` tokens per grid row ending ``[IMG_BREAK]``, the last ``[IMG_END]``."""

from __future__ import annotations

import torch

from ._common import BOS, IMAGE, PAD, TEXT, VISION_END, left_pad, text_tokens

PATCH, MERGE = 4, 2
IMAGE_BREAK, IMAGE_END = 8, VISION_END
#: (height, width) in px of row b's image.
IMAGE_SIZES = ((48, 32), (32, 56))


def config():
    from transformers import Mistral3Config, MistralConfig, PixtralVisionConfig

    vision = PixtralVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, head_dim=8,
        image_size=64, patch_size=PATCH,
    )
    return Mistral3Config(
        vision_config=vision, text_config=MistralConfig(**TEXT, sliding_window=None), image_token_index=IMAGE,
        spatial_merge_size=MERGE, vision_feature_layer=-1, pad_token_id=PAD,
    )


def _image(height: int, width: int) -> list[int]:
    """The processor's token layout of one image of ``height x width`` px."""
    step = PATCH * MERGE
    tokens = ([IMAGE] * (width // step) + [IMAGE_BREAK]) * (height // step)
    tokens[-1] = IMAGE_END
    return tokens


def inputs(model, batch: int, images: bool, generator: torch.Generator) -> dict[str, torch.Tensor]:
    rows, sizes = [], []
    for b in range(batch):
        image: list[int] = []
        if images:
            sizes.append(IMAGE_SIZES[b % len(IMAGE_SIZES)])
            image = _image(*sizes[-1])
        rows.append([BOS] + image + text_tokens(b, generator))
    out = left_pad(rows)
    if images:
        height, width = max(h for h, _ in sizes), max(w for _, w in sizes)
        pixels = torch.zeros(len(sizes), 3, height, width)  # the processor pads to the batch's largest image
        for i, (h, w) in enumerate(sizes):
            pixels[i, :, :h, :w] = torch.randn(3, h, w, generator=generator)
        out["pixel_values"] = pixels
        out["image_sizes"] = torch.tensor(sizes)
    return out
