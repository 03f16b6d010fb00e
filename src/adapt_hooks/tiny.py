"""Tiny random-weight VLMs of every supported family, built from configs (no download).

They make the library testable and demonstrable anywhere: a few layers, hidden size 32, a vision
tower of a couple of layers, a 64-token vocabulary (0 pad, 1 bos, 3 image, 4 video, 5/6 vision
start/end; text ids from 10).
"""

from __future__ import annotations

import torch
from torch import nn

PAD, BOS, IMAGE, VIDEO, VISION_START, VISION_END = 0, 1, 3, 4, 5, 6
VOCAB = 64
FIRST_TEXT_ID = 10

_TEXT = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    pad_token_id=PAD,
    bos_token_id=BOS,
    eos_token_id=2,
)
#: (t, h, w) patch grids of the images of the tiny Qwen models: 4x4 and 4x6 tokens after merging.
QWEN_IMAGE_GRIDS = ((1, 8, 8), (1, 8, 12))
LLAVA_IMAGE_SIZE, LLAVA_PATCH = 48, 6  # 8x8 = 64 image tokens


def _llava_config():
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vision = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        image_size=LLAVA_IMAGE_SIZE, patch_size=LLAVA_PATCH,
    )
    side = LLAVA_IMAGE_SIZE // LLAVA_PATCH
    return LlavaConfig(
        vision_config=vision, text_config=LlamaConfig(**_TEXT), image_token_index=IMAGE,
        image_seq_length=side * side, vision_feature_select_strategy="default", vision_feature_layer=-1,
        pad_token_id=PAD,
    )


def _qwen_config(model_type: str):
    from transformers import Qwen2_5_VLConfig, Qwen2VLConfig

    text = dict(_TEXT, rope_parameters={"rope_type": "default", "mrope_section": [1, 1, 2], "rope_theta": 10000.0})
    common = dict(num_heads=4, patch_size=14, spatial_merge_size=2, temporal_patch_size=2, depth=2)
    if model_type == "qwen2_vl":
        config_cls, vision = Qwen2VLConfig, dict(common, embed_dim=32, hidden_size=32)
    else:
        config_cls = Qwen2_5_VLConfig
        vision = dict(common, hidden_size=32, out_hidden_size=32, intermediate_size=64, fullatt_block_indexes=[1], window_size=56)
    return config_cls(
        vision_config=vision, text_config=text, image_token_id=IMAGE, video_token_id=VIDEO,
        vision_start_token_id=VISION_START, vision_end_token_id=VISION_END, pad_token_id=PAD,
    )


_BUILDERS = {"llava": _llava_config, "qwen2_vl": lambda: _qwen_config("qwen2_vl"), "qwen2_5_vl": lambda: _qwen_config("qwen2_5_vl")}
MODEL_TYPES = tuple(_BUILDERS)


def tiny_model(model_type: str = "llava", attn_implementation: str = "sdpa", seed: int = 0) -> nn.Module:
    """A tiny random-weight ``*ForConditionalGeneration`` of ``model_type``, in eval mode."""
    from transformers import AutoModelForImageTextToText

    if model_type not in _BUILDERS:
        raise ValueError(f"No tiny model for {model_type!r}; available: {', '.join(MODEL_TYPES)}.")
    torch.manual_seed(seed)
    config = _BUILDERS[model_type]()
    model = AutoModelForImageTextToText.from_config(config, attn_implementation=attn_implementation)
    model.generation_config.pad_token_id = PAD
    model.generation_config.eos_token_id = None  # random weights: always generate max_new_tokens
    return model.eval()


def tiny_inputs(model: nn.Module, batch: int = 1, *, images: bool = True, seed: int = 0) -> dict[str, torch.Tensor]:
    """Prompts for :func:`tiny_model`: row b has its own image and ``6 + 3b`` text tokens, left
    padded to a common length (so a batch of 2 exercises padding)."""
    gen = torch.Generator().manual_seed(seed)
    model_type = model.config.model_type
    rows, pixels, grids = [], [], []
    for b in range(batch):
        text = torch.randint(FIRST_TEXT_ID, VOCAB, (6 + 3 * b,), generator=gen).tolist()
        image: list[int] = []
        if images and model_type == "llava":
            image = [IMAGE] * model.config.image_seq_length
            pixels.append(torch.randn(3, LLAVA_IMAGE_SIZE, LLAVA_IMAGE_SIZE, generator=gen))
        elif images:
            t, h, w = QWEN_IMAGE_GRIDS[b % len(QWEN_IMAGE_GRIDS)]
            merge = model.config.vision_config.spatial_merge_size
            image = [VISION_START] + [IMAGE] * (t * h * w // merge**2) + [VISION_END]
            patch_dim = 3 * model.config.vision_config.temporal_patch_size * model.config.vision_config.patch_size**2
            pixels.append(torch.randn(t * h * w, patch_dim, generator=gen))
            grids.append((t, h, w))
        rows.append([BOS] + image + text)
    length = max(map(len, rows))
    input_ids = torch.full((batch, length), PAD)
    attention_mask = torch.zeros((batch, length), dtype=torch.long)
    for b, row in enumerate(rows):
        input_ids[b, length - len(row) :] = torch.tensor(row)
        attention_mask[b, length - len(row) :] = 1
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
    if pixels and model_type == "llava":
        inputs["pixel_values"] = torch.stack(pixels)
    elif pixels:
        inputs["pixel_values"] = torch.cat(pixels)
        inputs["image_grid_thw"] = torch.tensor(grids)
    if model_type != "llava":
        inputs["mm_token_type_ids"] = (input_ids == IMAGE).long()
    return inputs
