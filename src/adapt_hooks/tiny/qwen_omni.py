"""Tiny Qwen2.5-Omni and Qwen3-Omni thinkers: Qwen2.5-VL's (14 px patches, windowed) and Qwen3-VL's
(16 px, DeepStack) vision towers merged 2x2, a one-layer audio encoder, and Qwen-style prompts
with the images of :mod:`.qwen3_vl`'s rows."""

from __future__ import annotations

import torch

from ._common import IMAGE, PAD, TEXT, VIDEO, VISION_END, VISION_START
from . import qwen3_vl

AUDIO, AUDIO_START, AUDIO_END = 7, 8, 9
AUDIO_CONFIG = dict(num_mel_bins=8, encoder_layers=1, encoder_attention_heads=4, encoder_ffn_dim=64, d_model=32, output_dim=32,
                    max_source_positions=64, n_window=4)  # fmt: skip


def config(model_type: str = "qwen2_5_omni_thinker"):
    from transformers import Qwen2_5OmniThinkerConfig, Qwen3OmniMoeThinkerConfig

    if model_type == "qwen3_omni_moe_thinker":
        text = dict(TEXT, head_dim=8, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, rope_parameters=qwen3_vl.ROPE)
        audio = dict(AUDIO_CONFIG, downsample_hidden_size=8, n_window_infer=8, conv_chunksize=8)
        return Qwen3OmniMoeThinkerConfig(vision_config=qwen3_vl.VISION, audio_config=audio, text_config=text, image_token_id=IMAGE,
                                         video_token_id=VIDEO, audio_token_id=AUDIO, audio_start_token_id=AUDIO_START,
                                         vision_start_token_id=VISION_START, vision_end_token_id=VISION_END, pad_token_id=PAD)  # fmt: skip
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=4, patch_size=14, spatial_merge_size=2,
                  temporal_patch_size=2, window_size=56, out_hidden_size=TEXT["hidden_size"], fullatt_block_indexes=[1])  # fmt: skip
    text = dict(TEXT, rope_parameters={"rope_type": "default", "mrope_section": [2, 1, 1], "rope_theta": 10000.0})
    return Qwen2_5OmniThinkerConfig(vision_config=vision, audio_config=AUDIO_CONFIG, text_config=text, image_token_index=IMAGE,
                                    video_token_index=VIDEO, audio_token_index=AUDIO, audio_start_token_id=AUDIO_START,
                                    audio_end_token_id=AUDIO_END, vision_start_token_id=VISION_START,
                                    vision_end_token_id=VISION_END, pad_token_id=PAD)  # fmt: skip


def inputs(model, batch: int, images: bool, generator: torch.Generator) -> dict[str, torch.Tensor]:
    out = qwen3_vl.inputs(model, batch, images, generator)
    out.pop("mm_token_type_ids")  # the thinkers' generate refuses it
    return out
