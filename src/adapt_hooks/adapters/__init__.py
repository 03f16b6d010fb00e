"""Adapter registry, keyed by ``model.config.model_type``."""

from __future__ import annotations

from torch import nn

from .base import Adapter, RepeatedGridAdapter
from .aya_vision import AyaVisionAdapter, Cohere2VisionAdapter
from .deepseek_vl import DeepseekVLAdapter
from .ernie4_5_vl import Ernie45VLAdapter
from .gemma3 import Gemma3Adapter
from .gemma4 import Gemma4Adapter, Gemma4UnifiedAdapter
from .generic import GenericAdapter
from .glm4v import Glm46vAdapter, Glm4vAdapter
from .granite4_vision import Granite4VisionAdapter
from .hunyuan_vl import HunYuanVLAdapter
from .idefics3 import Idefics3Adapter
from .internvl import InternVLAdapter
from .kimi_k25 import KimiK25Adapter
from .lfm2_vl import Lfm2VlAdapter
from .lfm3_vl import Lfm3VlAdapter
from .llama4 import Llama4Adapter
from .llava import LlavaAdapter, VideoLlavaAdapter
from .llava_next import LlavaNextAdapter, LlavaNextVideoAdapter, LlavaOnevisionAdapter
from .minicpmv import MiniCPMV4_6Adapter, MiniCPMV4_7Adapter
from .mistral3 import Mistral3Adapter
from .mistral_large4 import MistralLarge4Adapter
from .mllama import MllamaAdapter
from .molmo2 import Molmo2Adapter
from .paligemma import PaliGemmaAdapter
from .qwen2_vl import Qwen2_5VLAdapter, Qwen2VLAdapter
from .qwen3_5 import Qwen3_5Adapter
from .qwen3_vl import Qwen3VLAdapter
from .qwen_omni import QwenOmniThinkerAdapter

_REGISTRY: dict[str, Adapter] = {}


def register_adapter(adapter: Adapter, *, overwrite: bool = False) -> Adapter:
    """Make ``guard`` support every ``model_type`` in ``adapter.model_types``."""
    if not adapter.model_types:
        raise ValueError(f"{type(adapter).__name__} declares no model_types.")
    for model_type in adapter.model_types:
        if model_type in _REGISTRY and not overwrite:
            raise ValueError(f"An adapter for {model_type!r} is already registered; pass overwrite=True to replace it.")
    for model_type in adapter.model_types:
        _REGISTRY[model_type] = adapter
    return adapter


def supported_models() -> list[str]:
    """The ``model_type`` values ``guard`` supports."""
    return sorted(_REGISTRY)


def get_adapter(model: nn.Module) -> Adapter:
    """The adapter for ``model``, or a ``ValueError`` naming what is supported."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in _REGISTRY:
        raise ValueError(
            f"adapt-hooks has no adapter for model_type {model_type!r} ({type(model).__name__}). "
            f"Supported model types: {', '.join(supported_models())}. "
            'Register one with adapt_hooks.register_adapter(...), or try guard(model, adapter="generic") (any decoder '
            "whose prompt carries image placeholder tokens; see docs/adapters.md)."
        )
    return _REGISTRY[model_type]


def resolve_adapter(model: nn.Module, adapter: Adapter | str | None = None) -> Adapter:
    """``guard(adapter=...)``: the registered adapter of ``model`` (``None``), the generic fallback
    (``"generic"``), or an :class:`Adapter` instance used as given."""
    if adapter is None:
        return get_adapter(model)
    if isinstance(adapter, Adapter):
        return adapter
    if adapter == "generic":
        generic = GenericAdapter()
        generic.image_token_id(model.config)  # refuse now a model without placeholder tokens
        return generic
    raise ValueError(f'adapter= must be None, "generic" or an adapt_hooks.Adapter, got {adapter!r}.')


for _adapter in (
    LlavaAdapter(),
    LlavaNextAdapter(),
    LlavaOnevisionAdapter(),
    Qwen2VLAdapter(),
    Qwen2_5VLAdapter(),
    Qwen3VLAdapter(),
    Qwen3_5Adapter(),
    Glm4vAdapter(),
    Idefics3Adapter(),
    MllamaAdapter(),
    Gemma3Adapter(),
    Gemma4Adapter(),
    Gemma4UnifiedAdapter(),
    PaliGemmaAdapter(),
    InternVLAdapter(),
    Mistral3Adapter(),
    AyaVisionAdapter(),
    Cohere2VisionAdapter(),
    DeepseekVLAdapter(),
    Glm46vAdapter(),
    VideoLlavaAdapter(),
    LlavaNextVideoAdapter(),
    QwenOmniThinkerAdapter(),
    Ernie45VLAdapter(),
    Lfm2VlAdapter(),
    Lfm3VlAdapter(),
    Molmo2Adapter(),
    KimiK25Adapter(),
    MiniCPMV4_6Adapter(),
    MiniCPMV4_7Adapter(),
    HunYuanVLAdapter(),
    Granite4VisionAdapter(),
    Llama4Adapter(),
    MistralLarge4Adapter(),
):
    register_adapter(_adapter)

__all__ = ["Adapter", "GenericAdapter", "RepeatedGridAdapter", "get_adapter", "register_adapter", "resolve_adapter", "supported_models"]
