"""Everything adapt-hooks relies on that differs between transformers releases, in one place.

The guard touches a few transformers internals: the keyword under which ``generate`` hands the KV
cache to the model's ``forward``, how a prefill receives its images, the attention-function and
mask-function registries, the eager attention function of a modeling module, and the cache's
``reorder_cache``. This module is the only one that names them. :func:`check` refuses, in one
line, an installed release where one of them is gone; :func:`canary` (``adapt-hooks check``)
runs a tiny model through them and names what changed.

What differs inside the supported range:

- the cache keyword: ``past_key_values=`` up to 5.23, ``cache=`` from 5.24 (``past_key_values``
  is still accepted there, deprecated, so a hand-written loop may pass either);
- the images of a prefill: ``pixel_values`` up to 5.22; from 5.23 ``generate`` runs the vision
  encoder first and hands its output over as ``mm_encoder_outputs={"image": ...}``, dropping
  ``pixel_values`` and the encoder's own inputs (``image_grid_thw``, ``image_sizes``, ...), and
  expands that output itself for beams and several return sequences. A contrast stream that needs
  other pixels (VCD's noised image) reads the encoder's inputs through :class:`ImageCapture` and
  re-encodes with :func:`encode_images` and :func:`expand_encoded`.

- Molmo2's ``image_token_pooling``: indices into all the batch's patches up to 5.24, into each
  image's own from 5.25 (:data:`MOLMO2_POOLING_PER_IMAGE`);
- ``from_pretrained`` uses the ``kernels`` package's hub kernels by default from 5.25, on CUDA,
  ROCm and XPU (norms, activations, linear-attention layers; the softmax attention the guard
  hooks is not among them); ``USE_HUB_KERNELS=NO`` turns them off.

Behaviour of one kind of model lives here too: sparse (DSA) attention hands a custom-named attention
function its top-k pick as ``indices=`` (:func:`index_mask`), and Llama 4 needs two upstream bugs
worked around from 5.23 on (:func:`repair_llama4`).
"""

from __future__ import annotations

import re
import sys
import warnings
from collections.abc import Callable, Mapping
import functools
from functools import cache

import torch
import transformers
from torch import nn
from transformers import masking_utils, modeling_utils
from transformers.cache_utils import Cache


def _release(version: str) -> tuple[int, ...]:
    """``"5.24.0"`` -> ``(5, 24, 0)``; pre-release and dev suffixes are ignored."""
    return tuple(int(part) for part in re.findall(r"\d+", version.split("+")[0])[:3])


#: The oldest release adapt-hooks supports (pyproject's lower bound) and the newest it was tested on.
MINIMUM = "5.17.0"
NEWEST_TESTED = "5.25.0"
INSTALLED = transformers.__version__

#: Keywords under which a model's ``forward`` receives the KV cache, newest first.
CACHE_KEYWORDS = ("cache", "past_key_values")
#: The one ``generate`` uses in the installed release.
CACHE_KEYWORD = "cache" if _release(INSTALLED) >= (5, 24) else "past_key_values"
#: Forward keywords that bring a prefill its images (raw pixels, encoded images, or Mllama's
#: projected vision states).
IMAGE_KEYWORDS = ("pixel_values", "pixel_values_images", "mm_encoder_outputs", "cross_attention_states")
#: Keywords of raw image pixels (Video-LLaVA names its images ``pixel_values_images``).
PIXEL_KEYWORDS = ("pixel_values", "pixel_values_images")
#: The cache method beam search calls between steps.
REORDER = "reorder_cache"
#: From 5.25 Molmo2's ``image_token_pooling`` indexes each image's own patches (the model adds the
#: offsets from ``image_num_crops``); before, it indexed the patches of all images of the batch.
MOLMO2_POOLING_PER_IMAGE = _release(INSTALLED) >= (5, 25)

AttentionFn = Callable[..., tuple[torch.Tensor, torch.Tensor | None]]


class CompatibilityError(RuntimeError):
    """The installed transformers changed an internal the guard relies on (one line, naming it)."""

    def __init__(self, what: str) -> None:
        super().__init__(
            f"transformers {INSTALLED}: {what}. adapt-hooks is tested with transformers {tested_range()}: run "
            "`adapt-hooks check` to see what changed, and report its output to adapt-hooks."
        )


def tested_range() -> str:
    """The tested releases, for messages: ``"5.17.0 to 5.25.0"``."""
    return f"{MINIMUM} to {NEWEST_TESTED}"


def is_newer_than_tested(version: str | None = None) -> bool:
    """True when ``version`` (default: the installed one) is newer than the newest tested release."""
    return _release(version or INSTALLED) > _release(NEWEST_TESTED)


@cache
def check() -> None:
    """Refuse, once per process, an installed transformers that lacks an internal the guard uses;
    warn once when it is newer than the tested range (it may still work: ``adapt-hooks check`` tells)."""
    if _release(INSTALLED) < _release(MINIMUM):
        raise CompatibilityError(f"older than the oldest supported release {MINIMUM}")
    for what, ok in _static_checks():
        if not ok:
            raise CompatibilityError(what)
    if is_newer_than_tested():
        warnings.warn(
            f"adapt-hooks was tested with transformers {tested_range()}; {INSTALLED} is installed. Run `adapt-hooks "
            "check`: it says whether the internals the guard relies on still behave as expected.",
            stacklevel=3,
        )


def _static_checks() -> list[tuple[str, bool]]:
    """``(what would be wrong, whether it is fine)`` for each registry and method the guard uses."""
    mapping = lambda interface: isinstance(getattr(interface, "_global_mapping", None), dict)  # noqa: E731
    attention = getattr(modeling_utils, "ALL_ATTENTION_FUNCTIONS", {})
    masks = getattr(masking_utils, "ALL_MASK_ATTENTION_FUNCTIONS", {})
    return [
        ("transformers.modeling_utils has no AttentionInterface with a global mapping",
         mapping(getattr(modeling_utils, "AttentionInterface", None))),
        ("transformers.masking_utils has no AttentionMaskInterface with a global mapping",
         mapping(getattr(masking_utils, "AttentionMaskInterface", None))),
        ("ALL_ATTENTION_FUNCTIONS has no 'sdpa'", "sdpa" in attention),
        ("ALL_MASK_ATTENTION_FUNCTIONS lacks 'sdpa' or 'eager'", "sdpa" in masks and "eager" in masks),
        (f"transformers.Cache has no {REORDER}() or get_seq_length()",
         all(callable(getattr(Cache, name, None)) for name in (REORDER, "get_seq_length"))),
    ]  # fmt: skip


# -- the forward call ---------------------------------------------------------------------------
def forward_cache(kwargs: Mapping[str, object]):
    """The KV cache a model's ``forward`` call received, or ``None``. A cache under a keyword
    adapt-hooks does not know (a future rename) raises rather than pass for "no cache"."""
    for name in CACHE_KEYWORDS:
        value = kwargs.get(name)
        if value is not None:
            return value
    for name, value in kwargs.items():
        if isinstance(value, Cache):
            raise CompatibilityError(
                f"the model's forward received its KV cache as {name}=, a keyword adapt-hooks does not know "
                f"(it reads {', '.join(k + '=' for k in CACHE_KEYWORDS)})"
            )
    return None


def output_cache(output: object):
    """The KV cache a model's ``forward`` returned (``output.cache`` from 5.24, ``past_key_values`` before)."""
    for name in CACHE_KEYWORDS:
        value = getattr(output, name, None)
        if value is not None:
            return value
    return None


def pixel_keyword(kwargs: Mapping[str, object]) -> str | None:
    """The keyword under which ``kwargs`` hold raw image pixels (:data:`PIXEL_KEYWORDS`), or ``None``."""
    return next((name for name in PIXEL_KEYWORDS if kwargs.get(name) is not None), None)


def image_input(kwargs: Mapping[str, object]) -> str | None:
    """The keyword that brings this forward call images (see :data:`IMAGE_KEYWORDS`), or ``None``."""
    for name in IMAGE_KEYWORDS:
        value = kwargs.get(name)
        if name == "mm_encoder_outputs":
            value = encoded_images(kwargs)
        if value is not None:
            return name
    return None


def encoded_images(kwargs: Mapping[str, object]):
    """The vision encoder's output that ``generate`` hands the prefill (5.23 and newer), or ``None``."""
    encoded = kwargs.get("mm_encoder_outputs")
    return encoded.get("image") if isinstance(encoded, Mapping) else None


def image_features(encoded: object):
    """The per-image features of an image encoder's output: its ``pooler_output``, or, for an
    encoder that returns only DeepStack features (Granite 4 Vision: ``[(layer, [per image])]``),
    those of its first group; ``None`` when it has neither."""
    pooled = getattr(encoded, "pooler_output", None)
    if pooled is None and getattr(encoded, "deepstack_features", None):
        group = encoded.deepstack_features[0]
        pooled = group[1] if isinstance(group, tuple) and not isinstance(group[1], torch.Tensor) else None
    return pooled


# -- attention dispatch -------------------------------------------------------------------------
def text_attention(model: nn.Module) -> str | None:
    """The attention implementation the language model dispatches to (read at every forward)."""
    return model.config.get_text_config()._attn_implementation


def set_text_attention(model: nn.Module, implementation: str | None) -> None:
    """Point the language model's attention (and mask creation) at ``implementation`` from its next
    forward on, leaving the vision tower as it is."""
    model.config.get_text_config()._attn_implementation = implementation


def attention_function(implementation: str) -> AttentionFn | None:
    """The attention function registered under ``implementation``, or ``None``."""
    return modeling_utils.ALL_ATTENTION_FUNCTIONS.get(implementation)


def mask_function(implementation: str) -> Callable | None:
    """The mask builder registered under ``implementation`` (``None``: that name gets no mask)."""
    return masking_utils.ALL_MASK_ATTENTION_FUNCTIONS._global_mapping.get(implementation)


def eager_attention(module: nn.Module) -> AttentionFn | None:
    """The eager attention function of ``module``'s modeling file (what ``"eager"`` means for it)."""
    return getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)


def register(name: str, function: AttentionFn, mask: Callable | None) -> None:
    """Register ``function`` (and the mask format it expects) under ``name``, globally."""
    modeling_utils.AttentionInterface.register(name, function)
    if mask is not None:
        masking_utils.AttentionMaskInterface.register(name, mask)


def unregister(name: str) -> None:
    """Remove ``name`` from both registries (a no-op for a name that is not there)."""
    modeling_utils.AttentionInterface._global_mapping.pop(name, None)
    masking_utils.AttentionMaskInterface._global_mapping.pop(name, None)


def index_mask(
    query: torch.Tensor, key: torch.Tensor, attention_mask: torch.Tensor | None, kwargs: dict
) -> tuple[torch.Tensor | None, dict]:
    """The attention mask and keyword arguments that ``"eager"`` or ``"sdpa"`` would receive.

    DeepSeek-V3.2-style sparse attention (``indexed_attention`` layers: DeepSeek V3.2, GLM-MoE-DSA,
    Mistral Large 4, ...) folds its indexer's top-k pick of keys into the attention mask only when
    the attention implementation is named ``"eager"`` or ``"sdpa"``; under any other name, such as
    the one a guard registers, it hands the pick to the kernel as ``indices=`` (``[B, S, topk]``
    key indices per query) and leaves the mask causal. An attention function that calls eager or
    sdpa folds the pick here the same way, so the model attends to the keys it picked."""
    indices = kwargs.get("indices")
    if not isinstance(indices, torch.Tensor) or indices.ndim != 3 or indices.shape[:2] != (query.shape[0], query.shape[2]):
        return attention_mask, kwargs
    dropped = indices.new_ones((*indices.shape[:2], key.shape[2]), dtype=torch.bool).scatter(-1, indices.long(), False).unsqueeze(1)
    if attention_mask is None:
        attention_mask = ~dropped
    elif attention_mask.dtype == torch.bool:
        attention_mask = attention_mask & ~dropped
    else:
        attention_mask = attention_mask.masked_fill(dropped, torch.finfo(query.dtype).min)
    return attention_mask, {**kwargs, "indices": None}


# -- the vision encoder that generate runs before the prefill (5.23 and newer) ---------------------
class ImageCapture:
    """While installed, records the inputs of the last ``get_image_features`` calls that ``generate``
    makes on ``model.base_model`` before the prefill, and the number of images it encoded (the
    output is expanded in place for beams afterwards), so that a contrast stream can encode other
    pixels the same way. Installed as an instance attribute; :meth:`remove` restores the method, or the
    capture installed before it (a guard and a drift injection nest)."""

    def __init__(self, model: nn.Module) -> None:
        self.owner = model.base_model
        self.encode = getattr(self.owner, "get_image_features", None)
        self._previous = vars(self.owner).get("get_image_features")  # a capture installed before this one
        #: The last two calls: a generate encodes the images, then the videos, and some models
        #: (Kimi K2.5, MiniCPM-V) encode videos through get_image_features too.
        self.calls: list[tuple[dict, object, int]] = []
        self._record = None
        if self.encode is not None:

            @functools.wraps(self.encode)  # generate picks the encoder's inputs from its signature
            def record(*args, **kwargs):
                output = self.encode(*args, **kwargs)
                pooled = image_features(output)
                self.calls = [*self.calls[-1:], (dict(kwargs), output, 0 if pooled is None or args else len(pooled))]
                return output

            self._record = self.owner.get_image_features = record

    def inputs_for(self, encoded: object) -> tuple[dict, int] | None:
        """``(encoder inputs, images encoded)`` of the call that produced ``encoded``, or ``None``."""
        return next(((inputs, n) for inputs, output, n in reversed(self.calls) if output is encoded), None)

    def remove(self) -> None:
        if self._record is not None and vars(self.owner).get("get_image_features") is self._record:
            if self._previous is None:
                del self.owner.get_image_features
            else:
                self.owner.get_image_features = self._previous
        self.calls = []


def layout_inputs(model: nn.Module, capture: ImageCapture | None, kwargs: Mapping[str, object], input_ids) -> Mapping[str, object]:
    """The prefill's keyword arguments for an adapter's ``row_grids``. From 5.23 on ``generate``
    encodes the images first and leaves the encoder's other inputs (``image_grid_thw``,
    ``spatial_shapes``, ...) out of the prefill: those that ``capture`` recorded are added back,
    their per-image rows repeated for beams the way ``generate`` repeats the encoded images."""
    encoded = encoded_images(kwargs)
    captured = None if capture is None or encoded is None else capture.inputs_for(encoded)
    if captured is None:
        return kwargs
    encoder_inputs, n_images = captured
    # a prefill may name them with None (MiniCPM-V's prepare_inputs_for_generation passes target_sizes=None)
    extra = {k: v for k, v in encoder_inputs.items() if kwargs.get(k) is None and k not in PIXEL_KEYWORDS}
    pooled = image_features(encoded)
    if pooled is not None and input_ids is not None and n_images and len(pooled) > n_images:  # repeated for beams
        order = _expanded_images(model, input_ids, [len(p) for p in pooled], n_images)
        if order is None:  # the repetition cannot be followed: leave the per-image inputs out, as generate does
            extra = {k: v for k, v in extra.items() if not isinstance(v, torch.Tensor)}
        else:
            extra = {k: v[order] if isinstance(v, torch.Tensor) and v.shape[:1] == (n_images,) else v for k, v in extra.items()}
    return {**kwargs, **extra}


def _expanded_images(model: nn.Module, input_ids: torch.Tensor, lengths: list[int], n_images: int) -> torch.Tensor | None:
    """For each image of the expanded rows, the index of the image it repeats (``None`` when the
    rows' image tokens do not split the encoded images)."""
    token = getattr(model.config, "image_token_id", None)
    expand = len(lengths) // n_images
    if token is None or len(lengths) != expand * n_images or input_ids.shape[0] % expand:
        return None
    per_row, i = [], 0  # images of each expanded row, consumed in order
    for n in (input_ids == token).sum(-1).tolist():
        taken, k = 0, 0
        while taken < n and i < len(lengths):
            taken, i, k = taken + lengths[i], i + 1, k + 1
        if taken != n:
            return None
        per_row.append(k)
    if i != len(lengths):
        return None
    order, start = [], 0
    for sample in range(len(per_row) // expand):  # generate repeats each sample's images as a group
        k = per_row[sample * expand]
        order += list(range(start, start + k)) * expand
        start += k
    return torch.tensor(order, dtype=torch.long)


def encode_images(capture: ImageCapture, inputs: Mapping[str, object]):
    """The vision encoder's output of ``inputs`` (the keyword arguments ``generate`` gives it)."""
    return capture.encode(**{**inputs, "return_dict": True})


def expand_encoded(model: nn.Module, input_ids: torch.Tensor, encoded: object, expand_size: int):
    """``encoded`` (for the rows of ``input_ids``) expanded ``expand_size`` times per row, as
    ``generate`` expands its own for beams and return sequences."""
    if expand_size == 1:
        return encoded
    return model._expand_multimodal_outputs(input_ids, {"image": encoded}, expand_size=expand_size)["image"]


def is_dynamic_cache(cache: object) -> bool:
    """True for a cache that grows with its rows (the contrast rows of a stream need that)."""
    from transformers.cache_utils import DynamicCache

    return isinstance(cache, DynamicCache)


# -- transformers bugs of one family --------------------------------------------------------------
def repair_llama4(model: nn.Module) -> None:
    """Let a ``Llama4ForConditionalGeneration`` generate on transformers 5.23 and newer, where two
    upstream bugs break it (done once per model, a no-op where they are absent):

    - 5.24's ``forward`` builds its output with ``image_outputs=outputs.image_outputs``, but
      ``outputs`` is its language model's ``MoeCausalLMOutputWithPast``, which has no such field:
      every forward that returns a dict (so every ``generate``) raises ``AttributeError``. A
      forward hook on the language model gives its outputs ``image_outputs = None``.
    - ``generate`` expands the encoded images for beams and several return sequences through their
      ``pooler_output``, which Llama 4's vision model leaves empty (its features are
      ``last_hidden_state``), so the expanded rows get too few image features ("Image features and
      image tokens do not match"). A forward pre-hook expands ``last_hidden_state`` the same way,
      in place, when the rows are groups of identical copies (generate's expansion) holding a
      whole multiple of the features it brings.

    The logits are those the model computes where it works (one row per sample, no beams)."""
    from transformers.models.llama4 import modeling_llama4

    if "image_outputs" in getattr(modeling_llama4.Llama4CausalLMOutputWithPast, "__dataclass_fields__", {}):
        if _llama4_image_outputs not in model.language_model._forward_hooks.values():
            model.language_model.register_forward_hook(_llama4_image_outputs)
    if hasattr(model, "_expand_multimodal_outputs") and _llama4_expand_images not in model._forward_pre_hooks.values():
        model.register_forward_pre_hook(_llama4_expand_images, with_kwargs=True)


def _llama4_image_outputs(module: nn.Module, args: tuple, output: object) -> None:
    if isinstance(output, Mapping) and not hasattr(output, "image_outputs"):
        object.__setattr__(output, "image_outputs", None)


def _llama4_expand_images(model: nn.Module, args: tuple, kwargs: dict) -> None:
    encoded = encoded_images(kwargs)
    input_ids = kwargs.get("input_ids", args[0] if args else None)
    features = getattr(encoded, "last_hidden_state", None)
    if features is None or input_ids is None or features.shape[:-1].numel() == 0:
        return
    tokens, given = int((input_ids == model.config.image_token_id).sum()), features.shape[:-1].numel()
    expand = tokens // given
    if expand < 2 or tokens % given or input_ids.shape[0] % expand:
        return
    if not torch.equal(input_ids, input_ids[::expand].repeat_interleave(expand, dim=0)):
        return
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    grouped = model._expand_multimodal_outputs(
        input_ids[::expand], {"image": BaseModelOutputWithPooling(pooler_output=features)}, expand_size=expand
    )
    encoded.last_hidden_state = grouped["image"].pooler_output
