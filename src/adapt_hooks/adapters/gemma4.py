"""Gemma 4 (``gemma4``) and its encoder-free variant (``gemma4_unified``): one grid per image, of
the image's own size, read from ``image_position_ids``.

The processor resizes each image, keeping its aspect ratio, to ``ph x pw`` patches of 16 px (both
multiples of ``pooling_kernel_size`` k = 3, at most ``max_soft_tokens`` k x k blocks), patchifies it
row-major and pads the patches to a fixed count; ``image_position_ids`` ``[images, patches, 2]``
holds each patch's ``(x, y)``, ``(-1, -1)`` for padding. An image reaches the prompt as
``<boi>`` + one ``<|image|>`` soft token per k x k block + ``<eoi>``: nothing between the soft
tokens (no row separators).

- ``gemma4``: the SigLIP-like encoder sees the patches, its pooler averages each k x k block into
  one soft token at index ``(y // k) * (pw // k) + x // k`` and drops the padding, so an image's
  soft tokens are its ``ph/k x pw/k`` grid, row-major.
- ``gemma4_unified``: no vision encoder; the processor merges each k x k block into one model patch
  first, so ``image_position_ids`` already gives the soft tokens' ``(x, y)``, row-major (the grid
  is ``max y + 1 x max x + 1``).
- The soft tokens are the image keys; ``<boi>``/``<eoi>``, video tokens (``<|video|>``, frames of
  their own) and audio tokens are not.
- Several images simply add grids to the row, in the order of ``pixel_values``. Each image is one
  run of soft tokens (``<eoi><boi>`` separate adjacent images); where the images taken in order do
  not fit the runs (transformers before 5.23 repeats each image, not each sample's images, for
  beams), each run takes the grid of an image with its number of tokens.

The text decoder mixes sliding-window layers (a window far narrower than ``max_position_embeddings``)
with full-attention ones; only the full-attention layers keep every image key, and only they are
hooked. With ``num_kv_shared_layers`` > 0 the last layers compute no keys of their own:
each reads the keys and values of the last earlier layer of its type (``shared_kv_states``). A
shared full-attention layer therefore attends over the full-length keys of that layer, every image
key at its prompt position, and is hooked like the others: the guard reads and steers that layer's
own attention probabilities, which leave the shared keys untouched. (At prefill, from 5.24, those
layers see only the last prompt token's query; the guard only acts on decode steps.) Queries are
RMS-normalised and the attention passes ``scaling=1.0``, which is what the guard reads.
"""

from __future__ import annotations

import torch

from .base import Adapter, image_runs


class Gemma4Adapter(Adapter):
    model_types = ("gemma4",)
    example_checkpoint = "google/gemma-4-e2b-it"

    def pooling(self, config) -> int:
        """Patches per side that make one soft token."""
        return config.vision_config.pooling_kernel_size

    def image_grids(self, config, positions: torch.Tensor) -> list[tuple[int, int]]:
        """``(height, width)`` in soft tokens of each image of ``image_position_ids``."""
        k = self.pooling(config)
        grids = []
        for i, image in enumerate(positions.cpu()):
            xy = image[(image != -1).all(-1)]
            width, height = (int(v) + 1 for v in xy.max(0).values) if len(xy) else (0, 0)
            if len(xy) != height * width or height % k or width % k:
                raise ValueError(
                    f"{config.model_type}: image {i} of image_position_ids has {len(xy)} patches, not a full "
                    f"{height}x{width} grid of {k}x{k} blocks; pass image_position_ids as the processor returns it."
                )
            grids.append((height // k, width // k))
        return grids

    def row_grids(self, config, is_image, n_tokens, inputs):
        positions = self.required_input(config, inputs, "image_position_ids", n_tokens)
        if positions is None:
            return [[] for _ in n_tokens]
        images = self.image_grids(config, positions)
        runs = [image_runs(row) for row in is_image]
        taken = iter(images)
        grids = [[next(taken, (0, 0)) for _ in row] for row in runs]
        if all(h * w == n for row, lengths in zip(grids, runs) for (h, w), n in zip(row, lengths)):
            return grids
        by_size = {h * w: (h, w) for h, w in reversed(images)}  # the first image of each size
        missing = sorted({n for row in runs for n in row if n not in by_size})
        if missing:
            raise ValueError(
                f"{config.model_type}: runs of {missing} image tokens match no image of image_position_ids "
                f"(grids {images}); the prompt's image tokens do not match the images passed."
            )
        return [[by_size[n] for n in row] for row in runs]


class Gemma4UnifiedAdapter(Gemma4Adapter):
    model_types = ("gemma4_unified",)
    example_checkpoint = "google/gemma-4-12B-it"

    def pooling(self, config) -> int:
        return 1  # image_position_ids are the merged patches' own positions
