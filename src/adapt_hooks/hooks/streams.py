"""Contrast streams: the rows a contrast method compares against (VCD's noised image, PAI's
image-free prompt) travel in the same forward calls as the user's rows.

For a batch of ``B`` rows and ``S`` contrast methods, every forward call of a guarded prompt
carries ``(1 + S) · B`` rows: the user's, then ``B`` per method, each a copy its method edited
(:meth:`~adapt_hooks.Method.contrast_inputs`). One KV cache holds them all, so a memory-bound
decode step reads the weights once for every stream. The forward's output is cut back to the
user's ``B`` rows after the methods turned the streams' logits into the next-token logits.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from .. import compat
from ..methods.base import Method, Prompt

#: Tensor inputs of a forward call that are not per row (every stream shares them).
SHARED = frozenset({"cache_position", "logits_to_keep"})


def batch_axis(name: str, value: torch.Tensor) -> int | None:
    """The axis along which ``value`` (forward keyword ``name``) holds rows or images; ``None`` if shared."""
    if name in SHARED:
        return None
    return 1 if name == "position_ids" and value.ndim == 3 else 0  # M-RoPE positions: [3, B, L]


class Streams:
    """The contrast rows of a guard's contrast methods (in list order) for the current prompt."""

    def __init__(self, model: nn.Module, methods: Sequence[Method], packed: frozenset[str] = frozenset()) -> None:
        self.model = model
        self.packed = packed  # inputs whose images lie along the last axis (the adapter's packed_inputs)
        self.methods = [m for m in methods if m.contrast is not None]
        self.capture: compat.ImageCapture | None = None
        self.batch: int | None = None  # the user's rows of the current prompt; None: no streams now
        self.length = 0  # keys in the cache after the current forward call
        self._expand = 1  # rows per sample of the prompt (beams, return sequences), for encoded images

    @property
    def count(self) -> int:
        return 1 + len(self.methods)

    def install(self, capture: compat.ImageCapture) -> None:
        """Use the guard's record of the image encoder's inputs (it installs and removes it)."""
        self.capture = capture

    def remove(self) -> None:
        self.capture = None
        self.batch = None

    # -- forward calls ---------------------------------------------------------------------------
    def prefill(self, kwargs: dict, prompt: Prompt, cache: object) -> dict:
        """The prefill's keyword arguments for every stream's rows."""
        self.batch = None
        if cache is not None and not compat.is_dynamic_cache(cache):
            raise ValueError(
                f"{self.methods[0]!r} adds contrast rows to the batch, which needs a dynamic KV cache; this call "
                f"brings a {type(cache).__name__}. Generate without cache_implementation='static' (or pass a DynamicCache)."
            )
        input_ids = kwargs["input_ids"]
        batch, length = input_ids.shape
        images, encoded = self._raw_images(kwargs, batch)
        rest = {k: v for k, v in kwargs.items() if k != "mm_encoder_outputs"}
        copies = []
        for method in self.methods:
            copy = {**rest, **images}
            method.contrast_inputs(copy, prompt, prefill=True, length=length)
            copies.append(copy)
        combined = self._rows(rest, [{k: v for k, v in c.items() if k not in images} for c in copies], batch)
        if encoded:  # generate encoded the images already: encode every stream's pixels the same way
            combined["mm_encoder_outputs"] = {**kwargs["mm_encoder_outputs"], "image": self._encode(images, copies, input_ids)}
        self.batch, self.length = batch, length
        return combined

    def step(self, kwargs: dict, prompt: Prompt) -> dict:
        """A decode step's keyword arguments for every stream's rows."""
        new = kwargs.get("input_ids", kwargs.get("inputs_embeds"))
        self.length += new.shape[1]
        copies = []
        for method in self.methods:
            copy = dict(kwargs)
            method.contrast_inputs(copy, prompt, prefill=False, length=self.length)
            copies.append(copy)
        return self._rows(kwargs, copies, self.batch, decode=True)

    def contrast_logits(self, logits: torch.Tensor) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """The user's rows of a forward's logits, and each contrast method's rows (by ``id``)."""
        batch = self.batch
        streams = {id(m): logits[(i + 1) * batch : (i + 2) * batch] for i, m in enumerate(self.methods)}
        return logits[:batch], streams

    def cut(self, output: Mapping[str, object]) -> None:
        """Cut every per-row tensor of ``output`` (but the cache) back to the user's rows, in place."""
        rows, batch = self.batch * self.count, self.batch
        for name, value in list(output.items()):
            if name in compat.CACHE_KEYWORDS or name == "logits":
                continue
            if isinstance(value, torch.Tensor) and value.ndim and value.shape[0] == rows:
                output[name] = value[:batch]
            elif isinstance(value, (tuple, list)) and value and all(
                isinstance(v, torch.Tensor) and v.ndim and v.shape[0] == rows for v in value
            ):
                output[name] = type(value)(v[:batch] for v in value)

    def cache_index(self, beam_idx: torch.Tensor) -> torch.Tensor:
        """A beam reordering of the user's rows, applied to every stream's rows of the cache."""
        if self.batch is None:
            return beam_idx
        rows = beam_idx.shape[0]
        return torch.cat([beam_idx + i * rows for i in range(self.count)])

    # -- building the rows -------------------------------------------------------------------------
    def _raw_images(self, kwargs: Mapping[str, object], batch: int) -> tuple[dict, bool]:
        """The prompt's image inputs as the vision encoder takes them (``pixel_values`` and the
        rest), and whether ``generate`` already encoded them (from transformers 5.23 on)."""
        encoded = compat.encoded_images(kwargs)
        others = [m for m, out in (kwargs.get("mm_encoder_outputs") or {}).items() if m != "image" and out is not None]
        if others:
            raise ValueError(f"{self.methods[0]!r} supports image prompts; this one also brings {', '.join(others)}.")
        if encoded is None:  # raw pixels among the forward's inputs (before 5.23, or a hand-written call)
            return {}, False
        captured = None if self.capture is None else self.capture.inputs_for(encoded)
        if captured is None:
            raise ValueError(
                f"{self.methods[0]!r} needs the prompt's pixels, but the prefill brings only encoded images "
                f"(mm_encoder_outputs) that generate did not encode in this guard (transformers {compat.INSTALLED}): "
                "pass pixel_values, or run `adapt-hooks check`."
            )
        images, encoded_images = captured
        self._expand = len(compat.image_features(encoded)) // max(encoded_images, 1) if encoded_images else 1
        return dict(images), True

    def _encode(self, images: dict, copies: list[dict], input_ids: torch.Tensor):
        """One vision pass over the images of every stream (user's first), expanded for beams."""
        stacked = {
            k: torch.cat([v] + [c[k] for c in copies], -1 if k in self.packed else 0) if isinstance(v, torch.Tensor) else v
            for k, v in images.items()
        }
        encoded = compat.encode_images(self.capture, stacked)
        samples = input_ids[:: self._expand]
        return compat.expand_encoded(self.model, samples.repeat(self.count, 1), encoded, self._expand)

    def _rows(self, main: dict, copies: list[dict], batch: int, decode: bool = False) -> dict:
        """``main``'s keyword arguments with every stream's rows (or images) appended along their
        batch axis. At a decode step, a tensor that already has every stream's rows is per-row
        state the model keeps itself (it is left as is)."""
        combined = {}
        for name in dict.fromkeys([*main, *(k for c in copies for k in c)]):
            value = main.get(name)
            if value is None and name == "attention_mask":  # a stream made a mask: the user's rows see every key
                value = torch.ones_like(next(c[name] for c in copies if c.get(name) is not None))
            if not isinstance(value, torch.Tensor) or batch_axis(name, value) is None:
                combined[name] = value
                continue
            axis = -1 if name in self.packed else batch_axis(name, value)
            if decode and value.shape[axis] == batch * self.count:
                combined[name] = value
                continue
            parts = [value] + [c.get(name, value) for c in copies]
            combined[name] = torch.cat(parts, axis)
        return combined
