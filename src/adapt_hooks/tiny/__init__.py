"""Tiny random-weight VLMs of every supported family, built from configs (no download).

They make the library testable and demonstrable anywhere: a few layers, hidden size 32, a small
vision tower, a 64-token vocabulary (0 pad, 1 bos, 2 eos, 3 image, 4 video, 5/6 vision start/end;
text ids from 10). Each family lives in its own module with ``config()`` and ``inputs()``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from . import aya_vision, deepseek_vl, ernie4_5_vl, gemma3, gemma4, glm4v, granite4_vision, hunyuan_vl, idefics3, internvl, kimi_k25, lfm2_vl, lfm3_vl, llama4, llava, llava_next, minicpmv, mistral3, mistral_large4, mllama, molmo2, paligemma, qwen2_vl, qwen3_5, qwen3_vl, qwen_omni
from ._common import PAD

ATTENTION = ("eager", "sdpa")


@dataclass(frozen=True)
class TinyFamily:
    """How to build one family's tiny model and prompts, and which attention implementations it runs."""

    config: Callable[[], object]
    inputs: Callable[[nn.Module, int, bool, torch.Generator], dict[str, torch.Tensor]]
    attention: tuple[str, ...] = ATTENTION
    #: Called on the freshly built model, e.g. to open gates the family zero-initialises.
    prepare: Callable[[nn.Module], None] | None = None


_FAMILIES: dict[str, TinyFamily] = {}


def register_tiny_family(model_type: str, family: TinyFamily) -> None:
    """Add a family to the tiny models (and so to the test battery)."""
    _FAMILIES[model_type] = family


def installed(model_type: str) -> bool:
    """Whether the installed transformers knows ``model_type`` (families newer than the oldest
    supported release register their tiny model only where it exists)."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    return model_type in CONFIG_MAPPING_NAMES


def model_types() -> tuple[str, ...]:
    """Families that have a tiny model, i.e. every family the test battery runs on."""
    return tuple(_FAMILIES)


register_tiny_family("llava", TinyFamily(llava.config, llava.inputs))
register_tiny_family("qwen2_vl", TinyFamily(partial(qwen2_vl.config, "qwen2_vl"), qwen2_vl.inputs))
register_tiny_family("qwen2_5_vl", TinyFamily(partial(qwen2_vl.config, "qwen2_5_vl"), qwen2_vl.inputs))
register_tiny_family("qwen3_vl", TinyFamily(partial(qwen3_vl.config, "qwen3_vl"), qwen3_vl.inputs))
register_tiny_family("qwen3_vl_moe", TinyFamily(partial(qwen3_vl.config, "qwen3_vl_moe"), qwen3_vl.inputs))
register_tiny_family("qwen3_5", TinyFamily(partial(qwen3_5.config, "qwen3_5"), qwen3_vl.inputs))
register_tiny_family("qwen3_5_moe", TinyFamily(partial(qwen3_5.config, "qwen3_5_moe"), qwen3_vl.inputs))
register_tiny_family("glm46v", TinyFamily(partial(glm4v.config, "glm46v"), glm4v.glm46v_inputs))
register_tiny_family("video_llava", TinyFamily(llava.video_llava_config, llava.video_llava_inputs))
register_tiny_family("deepseek_vl", TinyFamily(partial(deepseek_vl.config, "deepseek_vl"), deepseek_vl.inputs))
register_tiny_family("deepseek_vl_hybrid", TinyFamily(partial(deepseek_vl.config, "deepseek_vl_hybrid"), deepseek_vl.inputs))
register_tiny_family("cohere2_vision", TinyFamily(partial(aya_vision.config, "cohere2_vision"), aya_vision.inputs))
register_tiny_family("llava_next_video", TinyFamily(partial(llava_next.config, "llava_next_video"), llava_next.inputs))
register_tiny_family("qwen2_5_omni_thinker", TinyFamily(partial(qwen_omni.config, "qwen2_5_omni_thinker"), qwen_omni.inputs))
register_tiny_family("qwen3_omni_moe_thinker", TinyFamily(partial(qwen_omni.config, "qwen3_omni_moe_thinker"), qwen_omni.inputs))
register_tiny_family("ernie4_5_vl_moe", TinyFamily(ernie4_5_vl.config, ernie4_5_vl.inputs))
register_tiny_family("glm4v", TinyFamily(partial(glm4v.config, "glm4v"), glm4v.inputs))
register_tiny_family("glm4v_moe", TinyFamily(partial(glm4v.config, "glm4v_moe"), glm4v.inputs))
register_tiny_family("llava_next", TinyFamily(partial(llava_next.config, "llava_next"), llava_next.inputs))
register_tiny_family("llava_onevision", TinyFamily(partial(llava_next.config, "llava_onevision"), llava_next.inputs))
register_tiny_family("idefics3", TinyFamily(partial(idefics3.config, "idefics3"), idefics3.inputs))
register_tiny_family("smolvlm", TinyFamily(partial(idefics3.config, "smolvlm"), idefics3.inputs))
register_tiny_family("mllama", TinyFamily(mllama.config, mllama.inputs, prepare=mllama.prepare))
register_tiny_family("gemma3", TinyFamily(gemma3.config, gemma3.inputs, prepare=gemma3.prepare))
register_tiny_family("gemma4", TinyFamily(gemma4.config, gemma4.inputs, prepare=gemma4.prepare))
register_tiny_family("gemma4_unified", TinyFamily(partial(gemma4.config, "gemma4_unified"), gemma4.inputs))
register_tiny_family("paligemma", TinyFamily(paligemma.config, paligemma.inputs))
register_tiny_family("internvl", TinyFamily(internvl.config, internvl.inputs))
register_tiny_family("mistral3", TinyFamily(mistral3.config, mistral3.inputs))
register_tiny_family("llama4", TinyFamily(llama4.config, llama4.inputs, prepare=llama4.prepare))
if installed("mistral_large4"):
    register_tiny_family("mistral_large4", TinyFamily(mistral_large4.config, mistral_large4.inputs, prepare=mistral_large4.prepare))
register_tiny_family("aya_vision", TinyFamily(partial(aya_vision.config, "aya_vision"), aya_vision.inputs))
register_tiny_family("lfm2_vl", TinyFamily(lfm2_vl.config, lfm2_vl.inputs))
if installed("lfm3_vl"):
    register_tiny_family("lfm3_vl", TinyFamily(lfm3_vl.config, lfm3_vl.inputs))
if installed("molmo2"):
    register_tiny_family("molmo2", TinyFamily(molmo2.config, molmo2.inputs))
register_tiny_family("kimi_k25", TinyFamily(kimi_k25.config, kimi_k25.inputs))
register_tiny_family("minicpmv4_6", TinyFamily(partial(minicpmv.config, "minicpmv4_6"), minicpmv.inputs))
if installed("minicpmv4_7"):
    register_tiny_family("minicpmv4_7", TinyFamily(partial(minicpmv.config, "minicpmv4_7"), minicpmv.inputs))
register_tiny_family("granite4_vision", TinyFamily(granite4_vision.config, granite4_vision.inputs))
register_tiny_family("hunyuan_vl", TinyFamily(hunyuan_vl.config, hunyuan_vl.inputs))


def tiny_model(model_type: str = "llava", attn_implementation: str = "sdpa", seed: int = 0) -> nn.Module:
    """A tiny random-weight ``*ForConditionalGeneration`` of ``model_type``, in eval mode."""
    from transformers import AutoModelForImageTextToText

    if model_type not in _FAMILIES:
        raise ValueError(f"No tiny model for {model_type!r}; available: {', '.join(model_types())}.")
    torch.manual_seed(seed)
    family = _FAMILIES[model_type]
    model = AutoModelForImageTextToText.from_config(family.config(), attn_implementation=attn_implementation)
    if family.prepare is not None:
        family.prepare(model)
    model.generation_config.pad_token_id = PAD
    model.generation_config.eos_token_id = None  # random weights: always generate max_new_tokens
    return model.eval()


def tiny_inputs(model: nn.Module, batch: int = 1, *, images: bool = True, seed: int = 0) -> dict[str, torch.Tensor]:
    """Prompts for :func:`tiny_model`: row b has its own image and ``6 + 3b`` text tokens, left
    padded to a common length (so a batch of 2 exercises padding)."""
    generator = torch.Generator().manual_seed(seed)
    return _FAMILIES[model.config.model_type].inputs(model, batch, images, generator)
