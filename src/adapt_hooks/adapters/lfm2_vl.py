"""LFM2-VL (``lfm2_vl``): SigLIP2 NaFlex images at their own size, optional tiles plus a thumbnail.

The vision tower sees each image (or tile) at its own size, ``spatial_shapes[i] = (h, w)`` patches,
and a pixel unshuffle merges ``downsample_factor`` x ``downsample_factor`` patches into one token,
row-major: an ``(h // f) x (w // f)`` grid per entry of ``spatial_shapes``. The processor resizes a
small image as a whole (one entry) and splits a large one into 512 px tiles plus a thumbnail of the
whole image (one entry each, tiles first, row by row). The prompt reads, per image,
``<|image_start|>`` + (``<|img_row_r_col_c|>`` + tile tokens for each tile, ``<|img_thumbnail|>``) +
image tokens + ``<|image_end|>``.

Decisions:
- Every ``<image>`` token is an image key; ``<|image_start|>``, ``<|image_end|>``,
  ``<|img_row_r_col_c|>`` and ``<|img_thumbnail|>`` are text tokens, not image keys.
- Each entry of ``spatial_shapes`` (a tile, a thumbnail, an unsplit image) is one grid, in order.
  Tiles stay separate grids: the tile arrangement (``image_rows``/``image_cols``) is dropped by the
  processor and every tile is encoded on its own.
- ``spatial_shapes`` is an encoder input: from transformers 5.23 on ``generate`` leaves it out of the
  prefill and the guard merges back what it recorded, each sample's images repeated for beams
  (``A, B, A, B``). Before 5.23 ``generate`` hands it to the prefill repeated image by image
  (``A, A, B, B``). Both orders are tried; the one whose grids are exactly the row's runs of image
  tokens (the separators split every grid off) wins, else the first whose sizes fit the rows (the
  in-order one: a prompt built with ``use_image_special_tokens=False`` has no separators to tell,
  so beam search over tiled images reads wrong tile grids before 5.23; transformers itself hands
  those beams the wrong image features there, since it repeats the tiles image by image).
- The text decoder is hybrid: LFM2's short-convolution layers keep no keys (no ``self_attn``), so
  only its ``full_attention`` layers are hooked.
"""

from __future__ import annotations

import torch

from .base import Adapter, image_runs, take_in_order


class Lfm2VlAdapter(Adapter):
    model_types = ("lfm2_vl",)
    example_checkpoint = "LiquidAI/LFM2-VL-1.6B"

    def row_grids(self, config, is_image, n_tokens, inputs):
        shapes = self.required_input(config, inputs, "spatial_shapes", n_tokens)
        if shapes is None:
            return [[] for _ in n_tokens]
        factor = config.downsample_factor
        images = [(int(h) // factor, int(w) // factor) for h, w in torch.as_tensor(shapes).tolist()]
        runs = [image_runs(is_image[b]) for b in range(len(n_tokens))]
        fitting = None
        for expand in self._expansions(images, n_tokens):
            grids = take_in_order(images[::expand], n_tokens[::expand])
            if grids is None:
                continue
            grids = [grids[b // expand] for b in range(len(n_tokens))]
            if all([h * w for h, w in row] == run for row, run in zip(grids, runs)):
                return grids
            fitting = fitting or grids
        if fitting is None:
            raise ValueError(
                f"{config.model_type}: spatial_shapes gives {len(images)} grids {images} (after the {factor}x{factor} "
                f"pixel unshuffle) that do not split into the rows' image tokens {list(n_tokens)}."
            )
        return fitting

    @staticmethod
    def _expansions(images: list[tuple[int, int]], n_tokens) -> list[int]:
        """1 (images in row order), then every factor by which both the images and the rows come in
        runs of identical copies (``generate`` before 5.23 repeats each image for its beams)."""
        n_rows, n_images, found = len(n_tokens), len(images), [1]
        for e in range(2, n_rows + 1):
            if n_rows % e or n_images % e:
                continue
            if all(images[i] == images[i - i % e] for i in range(n_images)) and all(
                n_tokens[b] == n_tokens[b - b % e] for b in range(n_rows)
            ):
                found.append(e)
        return found

