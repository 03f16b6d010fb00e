"""Gemma 3 (``gemma3``): one square grid per image or pan-and-scan crop, sliding-window text layers.

SigLIP sees an 896 px image as 64x64 patches of 14 px; the projector average-pools them to
``mm_tokens_per_image`` = 256 tokens, a 16x16 grid, row-major. An image reaches the prompt as
``\\n\\n<start_of_image>`` + 256 ``<image_soft_token>`` + ``<end_of_image>\\n\\n``.

- The 256 soft tokens of an image are its grid of image keys.
- ``<start_of_image>``, ``<end_of_image>`` and the surrounding newlines are not image keys: they carry
  their own token ids and no pixels.
- Pan-and-scan crops are images of their own (the original image first, then each crop), so each
  crop is its own 16x16 grid; the crops' arrangement is not among the model's inputs.
- Several images in a prompt simply add grids to the row.
- Only layers whose cache keeps every token are hooked: full-attention layers, and sliding-window
  layers whose window spans ``max_position_embeddings`` (real checkpoints have none: 1024 vs 131072).
  A narrower sliding layer drops the image keys once the sequence outgrows its window, and its
  cache indices then no longer match the prompt's.

The queries are scaled by ``query_pre_attn_scalar ** -0.5`` (not ``head_dim ** -0.5``); the text
attention passes that scaling to the attention function, which is where the guard reads it.
"""

from __future__ import annotations

import math

from .base import RepeatedGridAdapter


def cache_keeping_layers(text_config, n_layers: int) -> list[int]:
    """Layers whose KV cache holds every token of any sequence the model supports: full-attention
    layers, and sliding-window layers whose window is at least ``max_position_embeddings``."""
    window = getattr(text_config, "sliding_window", None)
    max_positions = getattr(text_config, "max_position_embeddings", None)
    wide = window is None or (max_positions is not None and window >= max_positions)
    layer_types = getattr(text_config, "layer_types", None)
    if layer_types is None:
        return list(range(n_layers)) if wide else []
    return [i for i, kind in enumerate(layer_types[:n_layers]) if kind == "full_attention" or wide]


def checked_cache_keeping_layers(model, n_layers: int) -> list[int]:
    """:func:`cache_keeping_layers`, or a clear error when there are none."""
    text_config = model.config.get_text_config()
    layers = cache_keeping_layers(text_config, n_layers)
    if not layers:
        raise ValueError(
            f"{model.config.model_type}: every text layer uses a sliding window of {text_config.sliding_window} "
            "tokens, so no layer keeps the image keys for the whole generation."
        )
    return layers


def square_side(tokens: int, what: str) -> int:
    """The side of a square grid of ``tokens`` tokens."""
    side = math.isqrt(tokens)
    if side * side != tokens:
        raise ValueError(f"{what} is {tokens}, not a square number of tokens.")
    return side


class Gemma3Adapter(RepeatedGridAdapter):
    unit = "image or crop"
    model_types = ("gemma3",)
    example_checkpoint = "google/gemma-3-4b-it"

    def hookable_layers(self, model, modules):
        return checked_cache_keeping_layers(model, len(modules))

    @staticmethod
    def grid(config) -> tuple[int, int]:
        """``(height, width)`` in tokens of one image after the projector's average pooling."""
        side = square_side(config.mm_tokens_per_image, "gemma3: mm_tokens_per_image")
        return side, side
