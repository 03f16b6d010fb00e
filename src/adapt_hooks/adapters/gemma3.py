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


    @staticmethod
    def grid(config) -> tuple[int, int]:
        """``(height, width)`` in tokens of one image after the projector's average pooling."""
        side = square_side(config.mm_tokens_per_image, "gemma3: mm_tokens_per_image")
        return side, side
