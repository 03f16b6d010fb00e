"""Molmo2 (``molmo2``): each image as a low-resolution global view and a high-resolution view, two grids.

The processor resizes the whole image to one crop (378 px, 27x27 patches of 14 px) and also tiles
it into overlapping crops; the vision tower encodes every crop, and the adapter pools 2x2 patches
into one token through ``image_token_pooling``: the global crop gives a ``resized_h x resized_w``
grid, and the crops, their overlap margins dropped, tile one canvas whose pooled patches give a
single ``h x w`` grid over the whole image (``image_grids`` row ``(resized_h, resized_w, h, w)``).
The prompt reads, per image, ``<low_res_im_start>`` + (``<im_patch>`` x ``resized_w`` + ``<im_col>``)
x ``resized_h`` + ``<im_end>``, then ``<im_start>`` + (``<im_patch>`` x ``w`` + ``<im_col>``) x ``h`` +
``<im_end>``; the pooled features are added to the ``<im_patch>`` embeddings in that order.

Decisions:
- Only ``<im_patch>`` tokens (``image_patch_id``, which the config also names ``image_token_id``)
  are image keys. ``<im_col>`` (end of a grid row), ``<im_start>``, ``<low_res_im_start>``,
  ``<im_end>``, ``<frame_start>`` and ``<frame_end>`` are not, although the prefill's
  ``mm_token_type_ids`` put them in the image tokens' bidirectional block.
- Each image gives two grids, the global view first, then the high-resolution view; the crops are
  not grids of their own, since the processor merges them into the one high-resolution grid.
- The grids come from ``image_grids`` when the forward call has it (a hand-written call, or
  ``generate`` from 5.23 on, whose image encoding the guard records). Otherwise they are read from
  the prompt: runs of ``<im_patch>`` one token apart (an ``<im_col>``) are rows of one grid, runs
  further apart are different grids.
- Video frames use ``<im_patch>`` too (``video_token_id`` is the same id), so they are image keys:
  one grid per frame, ``video_grids`` ``(frames, rows, cols)`` when present, else read from the
  prompt (frames carry no ``<im_col>`` by default; the video processor makes them square).
"""

from __future__ import annotations

import math

import torch

from .base import Adapter, take_in_order


class Molmo2Adapter(Adapter):
    model_types = ("molmo2",)
    example_checkpoint = "allenai/Molmo2-8B"

    def row_grids(self, config, is_image, n_tokens, inputs):
        image_grids = inputs.get("image_grids")
        if image_grids is not None:
            views = [view for r_h, r_w, h, w in torch.as_tensor(image_grids).tolist() for view in ((r_h, r_w), (h, w))]
            grids = take_in_order([view for view in views if view[0] * view[1]], n_tokens)
            if grids is None:
                raise ValueError(
                    f"{config.model_type}: image_grids gives views {views} that do not split into the rows' image "
                    f"tokens {list(n_tokens)}; the prompt's image tokens do not match the images passed."
                )
            return grids
        frames = inputs.get("video_grids")
        frames = [] if frames is None else [(r, c) for t, r, c in torch.as_tensor(frames).tolist() for _ in range(t)]
        grids = [self._grids_from_prompt(config, is_image[b], frames) for b in range(len(n_tokens))]
        if frames:
            raise ValueError(f"{config.model_type}: video_grids describes {len(frames)} more frames than the prompt holds.")
        return grids

    @staticmethod
    def _grids_from_prompt(config, is_image: torch.Tensor, frames: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """One row's grids from its ``<im_patch>`` runs: each grid takes the next of ``frames``
        (consumed) when there is one; else its ``<im_col>`` rows give its shape, or it is square."""
        index = torch.nonzero(is_image).flatten()
        if index.numel() == 0:
            return []
        gaps = index.diff().tolist()
        grids, runs, run = [], [], 1
        for gap in gaps + [None]:
            if gap == 1:
                run += 1
                continue
            runs.append(run)
            run = 1
            if gap == 2:  # one <im_col> between two rows of the same grid
                continue
            size = sum(runs)
            if len(runs) > 1 and len(set(runs)) != 1:
                raise ValueError(f"{config.model_type}: a grid's <im_patch> rows have different lengths {runs}.")
            grid = (len(runs), runs[0]) if len(runs) > 1 else None
            if frames:
                frame = frames.pop(0)
                if frame[0] * frame[1] != size or grid not in (None, frame):
                    raise ValueError(f"{config.model_type}: a frame of {grid or size} tokens, but video_grids gives {frame}.")
                grid = frame
            if grid is None:
                side = math.isqrt(size)
                if side * side != size:
                    raise ValueError(
                        f"{config.model_type}: a run of {size} image tokens with no <im_col> rows is not square; "
                        "pass image_grids (or video_grids) as the processor returns them."
                    )
                grid = (side, side)
            grids.append(grid)
            runs = []
        return grids
