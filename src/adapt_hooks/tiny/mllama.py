"""Tiny Mllama (Llama 3.2 Vision): tiled vision tower (28 px tiles, patch 7 -> 4x4 patches + CLS
per tile, up to 4 tiles) + 4 text layers, of which layers 1 and 3 cross-attend to the image.

Prompts follow the real processor: the ``<|image|>`` tokens come first, then BOS and the text
(the images are not spread over placeholder tokens), and ``cross_attention_mask`` lets every
token from an image's token on attend to that image's valid tiles. Row 0 has one 2x2-tile image;
row 1 has a 1x2-tile and a 1x1-tile image, so a batch of 2 pads both images and tiles.
"""

from __future__ import annotations

import torch
from torch import nn

from ._common import BOS, IMAGE, TEXT, left_pad, text_tokens

TILE_SIZE, PATCH, MAX_TILES = 28, 7, 4
CROSS_ATTENTION_LAYERS = (1, 3)
#: Tile arrangement ``(rows, columns)`` of each image of row b (cycled for larger batches).
IMAGE_TILES = (((2, 2),), ((1, 2), (1, 1)))


def config():
    from transformers import MllamaConfig

    vision = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_global_layers=1, attention_heads=4,
        image_size=TILE_SIZE, patch_size=PATCH, max_num_tiles=MAX_TILES, intermediate_layers_indices=[0],
        vision_output_dim=64,  # hidden_size x (1 + len(intermediate_layers_indices))
    )
    text = dict(
        TEXT, cross_attention_layers=list(CROSS_ATTENTION_LAYERS),
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )
    return MllamaConfig(vision_config=vision, text_config=text, image_token_index=IMAGE)


def prepare(model: nn.Module) -> None:
    """Open the zero-initialised tanh gates (text cross-attention and its MLP, the vision tower's
    tile embeddings) so that the pixels change the logits."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(("cross_attn_attn_gate", "cross_attn_mlp_gate", "embedding.gate")):
                parameter.fill_(1.0)


def _aspect_ratio_id(vision, tiles: tuple[int, int]) -> int:
    """The processor's aspect-ratio id: 1-based index among the supported tilings (0 = no image)."""
    return [tuple(r) for r in vision.supported_aspect_ratios].index(tiles) + 1


def inputs(model, batch: int, images: bool, generator: torch.Generator) -> dict[str, torch.Tensor]:
    from transformers.models.mllama.processing_mllama import (
        convert_sparse_cross_attention_mask_to_dense,
        get_cross_attention_token_mask,
    )

    vision = model.config.vision_config
    per_row = [IMAGE_TILES[b % len(IMAGE_TILES)] if images else () for b in range(batch)]
    rows = [[IMAGE] * len(tiles) + [BOS] + text_tokens(b, generator) for b, tiles in enumerate(per_row)]
    out = left_pad(rows)
    if not images:
        return out
    n_images, size = max(map(len, per_row)), vision.image_size
    pixels = torch.zeros(batch, n_images, vision.max_num_tiles, 3, size, size)
    ratio_ids = torch.zeros(batch, n_images, dtype=torch.long)
    ratio_mask = torch.zeros(batch, n_images, vision.max_num_tiles, dtype=torch.long)
    for b, tilings in enumerate(per_row):
        for i, (h, w) in enumerate(tilings):
            pixels[b, i, : h * w] = torch.randn(h * w, 3, size, size, generator=generator)
            ratio_ids[b, i] = _aspect_ratio_id(vision, (h, w))
            ratio_mask[b, i, : h * w] = 1
    token_masks = [get_cross_attention_token_mask(ids, IMAGE) for ids in out["input_ids"].tolist()]
    n_tiles = [[h * w for h, w in tilings] for tilings in per_row]
    cross = convert_sparse_cross_attention_mask_to_dense(
        token_masks, n_tiles, vision.max_num_tiles, out["input_ids"].shape[1]
    )
    out.update(
        pixel_values=pixels, aspect_ratio_ids=ratio_ids, aspect_ratio_mask=ratio_mask,
        cross_attention_mask=torch.from_numpy(cross),
    )
    return out

