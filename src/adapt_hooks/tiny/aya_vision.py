"""Tiny Aya Vision: SigLIP tiles of 48 px, patch 4 -> 12x12 patches -> pixel shuffle 2 -> 6x6 = 36
tokens per tile, Cohere2 text whose layers alternate sliding-window (16 tokens) and full attention.
Row 0's image is the global tile alone; row 1's is 2 tiles plus the global tile, each tile announced
by its marker as the processor writes it, so a batch mixes tilings."""

from __future__ import annotations

import torch

from ._common import FIRST_TEXT_ID, IMAGE, PAD, TEXT, VISION_END, VISION_START, tiled_inputs

IMAGE_SIZE, PATCH, DOWNSAMPLE = 48, 4, 2
#: Marker tokens before each tile: ``TILE`` (followed by the tile's number, ``TILE_1``...) and ``TILE_GLOBAL``.
TILE, TILE_GLOBAL = 8, 9
#: Tiles per row's image, the global one included.
TILES = (1, 3)
SLIDING_WINDOW = 16


def config(model_type: str = "aya_vision"):
    from transformers import AyaVisionConfig, Cohere2Config, SiglipVisionConfig

    vision = SiglipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        image_size=IMAGE_SIZE, patch_size=PATCH, vision_use_head=False,
    )
    text = Cohere2Config(
        **TEXT, sliding_window=SLIDING_WINDOW,
        layer_types=["sliding_attention", "full_attention"] * (TEXT["num_hidden_layers"] // 2),
    )
    if model_type == "cohere2_vision":  # Command A Vision: the same tiles and text, its own projector
        from transformers import Cohere2VisionConfig

        return Cohere2VisionConfig(vision_config=vision, text_config=text, image_token_id=IMAGE, downsample_factor=DOWNSAMPLE,
                                   alignment_intermediate_size=64, pad_token_id=PAD)  # fmt: skip
    return AyaVisionConfig(
        vision_config=vision, text_config=text, image_token_index=IMAGE, downsample_factor=DOWNSAMPLE,
        vision_feature_select_strategy="full", vision_feature_layer=-1, pad_token_id=PAD,
    )


def _image(tiles: int, per_tile: int) -> list[int]:
    """The processor's token layout of one image of ``tiles`` tiles (the global tile last)."""
    out = [VISION_START]
    for index in range(1, tiles):
        out += [TILE, FIRST_TEXT_ID + index] + [IMAGE] * per_tile
    return out + [TILE_GLOBAL] + [IMAGE] * per_tile + [VISION_END]


def inputs(model, batch: int, images: bool, generator: torch.Generator) -> dict[str, torch.Tensor]:
    per_tile = (IMAGE_SIZE // PATCH // DOWNSAMPLE) ** 2
    return tiled_inputs(batch, images, generator, TILES, lambda tiles: _image(tiles, per_tile), IMAGE_SIZE)
