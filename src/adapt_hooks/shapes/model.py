"""The tiny VLM: a real ``LlavaForConditionalGeneration`` (CLIP vision tower + Llama decoder).

Vision: CLIP, 48 px images, patch 8 -> 6 x 6 = 36 image tokens (CLS dropped), hidden 128,
3 layers, 4 heads. Text: Llama, hidden 128, 4 layers, 4 heads, MLP 384, tied embeddings, a
30-word vocabulary. About 1.3 M parameters; stored as fp32 safetensors in :data:`WEIGHTS_DIR`, trained
by ``benchmarks/train_tiny_vlm.py``, with the early-warning risk model fitted for it
(:data:`RISK_FILE`, written by ``benchmarks/hallucination.py --save-risk``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from . import text
from .world import IMAGE_SIZE

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
RISK_FILE = WEIGHTS_DIR / "risk.safetensors"


def build_config():
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vision = CLIPVisionConfig(
        hidden_size=128, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4,
        image_size=IMAGE_SIZE, patch_size=text.PATCH, num_channels=3,
    )
    language = LlamaConfig(
        vocab_size=len(text.VOCAB), hidden_size=128, intermediate_size=384, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
        pad_token_id=text.PAD, bos_token_id=text.BOS, eos_token_id=text.EOS, tie_word_embeddings=True,
    )
    config = LlavaConfig(
        vision_config=vision, text_config=language, image_token_index=text.IMAGE,
        image_seq_length=text.N_IMAGE_TOKENS, vision_feature_select_strategy="default",
        vision_feature_layer=-1, projector_hidden_act="gelu", tie_word_embeddings=True,
    )
    config.pad_token_id = text.PAD
    return config


def build_model(seed: int, attn_implementation: str = "sdpa"):
    """A freshly initialised model (``torch.manual_seed(seed)`` before construction)."""
    from transformers import LlavaForConditionalGeneration

    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration._from_config(build_config(), attn_implementation=attn_implementation)
    _generation_defaults(model)
    return model


def _generation_defaults(model) -> None:
    model.generation_config.eos_token_id = text.EOS
    model.generation_config.pad_token_id = text.PAD
    model.generation_config.bos_token_id = text.BOS


def load_model(path: str | Path | None = None, attn_implementation: str = "eager"):
    """The stored model (``path``: the shipped :data:`WEIGHTS_DIR`, or a folder of retrained
    weights) through transformers' normal loading path, in eval mode."""
    from transformers import LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(str(path or WEIGHTS_DIR), attn_implementation=attn_implementation)
    _generation_defaults(model)
    return model.eval()


def load_processor(path: str | Path | None = None):
    """The stored processor (``AutoProcessor``; ``path`` as in :func:`load_model`), falling back
    to building it from code."""
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(str(path or WEIGHTS_DIR))
    except (OSError, ValueError):
        return text.build_processor()


def load_risk(model=None):
    """The risk model fitted for the shipped weights (refused for any other model when given)."""
    from ..risk import RiskModel

    return RiskModel.load(RISK_FILE, model)


def n_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())
