"""HunYuan-VL (``hunyuan_vl``, HunyuanOCR): dynamic resolution, one grid per image.

The vision tower sees each image as ``image_grid_thw``'s ``h x w`` patches (row-major, not in
Qwen's merge-block order) and its merger folds ``spatial_merge_size`` x ``spatial_merge_size``
patches into one token by a strided convolution, so an image is a ``h / merge x w / merge`` grid.
The merger then appends a learned ``image_newline`` embedding after every grid row and wraps the
image in learned ``image_begin`` / ``image_end`` embeddings; the processor writes the image token
once per slot, ``h' * (w' + 1) + 2`` in all, between the image start and end tokens of the
prompt.

- The ``h' x w'`` patch tokens are the image's grid of image keys, row-major.
- The begin slot, the newline slot closing each grid row and the end slot are not image keys: they
  carry the image token id but one learned embedding each, no pixels (``GridSpec`` with
  ``leading = 1``, ``row_stride = w' + 1``, ``trailing = 1``).
- Several images in a row contribute their grids in order.

Grid shapes come from ``image_grid_thw`` (every image of the batch in order, in patch units; the
guard adds it back where ``generate`` encodes images before the prefill). transformers before 5.23
repeats each of its rows in place for beams (``A A B B`` where the rows need ``A B A B``) and
mangles the M-RoPE ``position_ids`` of the expanded rows, so the grids are then read from the
de-interleaved ``image_grid_thw``, each sample's images repeated for its beams. A call without
``image_grid_thw`` is read from its M-RoPE ``position_ids``, whose last three channels are
``(width, height, image index)``: width runs over ``0 .. w'`` (the newline slot included) and
height over ``0 .. h' - 1`` inside each image's span.
"""

from __future__ import annotations

import torch

from ..layout import GridSpec
from .base import Adapter


def image_spec(height: int, width: int) -> GridSpec:
    """One image's grid: begin slot, ``height`` rows of ``width`` patches and a newline, end slot."""
    return GridSpec(height, width, row_stride=width + 1, leading=1, trailing=1)


class HunYuanVLAdapter(Adapter):
    model_types = ("hunyuan_vl",)
    example_checkpoint = "tencent/HunyuanOCR"

    def row_grids(self, config, is_image, n_tokens, inputs):
        thw = inputs.get("image_grid_thw")
        if thw is None:
            grids = _grids_from_mrope(is_image, inputs.get("position_ids"))
            if grids is None and any(n_tokens):
                raise ValueError(
                    f"{config.model_type}: the prompt has image tokens but the forward call has neither "
                    "`image_grid_thw` nor M-RoPE `position_ids` that place them; pass image_grid_thw as the processor "
                    "returns it."
                )
            return grids or [[] for _ in n_tokens]
        merge = config.vision_config.spatial_merge_size
        images = [image_spec(int(h) // merge, int(w) // merge) for _, h, w in torch.as_tensor(thw).tolist()]
        for expand in range(1, len(n_tokens) + 1):
            if len(n_tokens) % expand or len(images) % expand:
                continue
            base = images[::expand]  # each image repeated ``expand`` times in place, for 5.17's beams
            grids = _fit(base, n_tokens, expand) if images == [s for s in base for _ in range(expand)] else None
            if grids is not None:
                return grids
        raise ValueError(
            f"{config.model_type}: image_grid_thw's {len(images)} images do not take exactly the rows' image tokens "
            f"{list(n_tokens)} ({_SPAN} each); the prompt's image tokens do not match the images passed."
        )


_SPAN = "h' * (w' + 1) + 2"


def _grids_from_mrope(is_image: torch.Tensor, positions) -> list[list[GridSpec]] | None:
    """Each row's grids from the width and height channels of its M-RoPE ``position_ids``
    ``[axes, B, L]``, one image per run of image tokens (the start and end tokens part them);
    ``None`` when the call has no such positions or a run is not one image."""
    if not isinstance(positions, torch.Tensor) or positions.ndim != 3 or positions.shape[0] < 3:
        return None
    grids = []
    for b in range(is_image.shape[0]):
        index = torch.nonzero(is_image[b]).flatten()
        runs = torch.tensor_split(index, (torch.nonzero(index.diff() != 1).flatten() + 1).tolist()) if len(index) else ()
        row = []
        for run in runs:
            if run.numel() < 3:
                return None
            width, height = positions[-3:-1, b, run[1:-1].to(positions.device)]
            spec = image_spec(int(height.max()) + 1, int(width.max()))
            if spec.width < 1 or spec.span != run.numel():
                return None
            row.append(spec)
        grids.append(row)
    return grids


def _fit(images: list[GridSpec], n_tokens, expand: int) -> list[list[GridSpec]] | None:
    """Rows ``expand`` at a time (one sample and its beams), each taking the sample's images in
    order; ``None`` unless they take exactly every row's image tokens and every image."""
    grids, i = [], 0
    for first in range(0, len(n_tokens), expand):
        row, held, n = [], 0, n_tokens[first]
        while held < n and i < len(images):
            row.append(images[i])
            held += images[i].span
            i += 1
        if held != n or any(n_tokens[first + k] != n for k in range(expand)):
            return None
        grids += [row] * expand
    return grids if i == len(images) else None
