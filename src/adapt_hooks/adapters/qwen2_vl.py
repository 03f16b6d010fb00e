"""Qwen2-VL and Qwen2.5-VL: dynamic resolution, one grid per image.

The language model sees one token per ``spatial_merge_size`` x ``spatial_merge_size`` patches,
row-major. Grid shapes come from ``image_grid_thw`` (every image of the batch in order, in patch
units) when the forward call has it; ``generate`` in recent transformers encodes images before the
prefill and passes M-RoPE ``position_ids`` instead, whose height and width channels give each
image's grid. Video tokens are not image keys here.
"""

from __future__ import annotations

import torch

from .base import Adapter


class Qwen2VLAdapter(Adapter):
    model_types = ("qwen2_vl",)
    example_checkpoint = "Qwen/Qwen2-VL-7B-Instruct"

    def row_grids(self, config, is_image, n_tokens, inputs):
        thw = inputs.get("image_grid_thw")
        if thw is not None:
            return self._grids_from_thw(config, thw, n_tokens)
        grids = self._grids_from_mrope(config, is_image, inputs)
        if grids is not None:
            return grids
        if any(n_tokens):
            raise ValueError(
                f"{config.model_type}: the prompt has image tokens but the forward call has neither "
                "`image_grid_thw` nor 3-D M-RoPE `position_ids`; pass image_grid_thw as the processor returns it."
            )
        return [[] for _ in n_tokens]

    @classmethod
    def _grids_from_mrope(cls, config, is_image: torch.Tensor, inputs) -> list[list[tuple[int, int]]] | None:
        """Each row's grids from the height and width channels of the call's 3- or 4-channel
        M-RoPE ``position_ids``; ``None`` when it has none."""
        positions = inputs.get("position_ids")
        if positions is None or positions.ndim != 3 or positions.shape[0] not in (3, 4):
            return None
        return [cls._grids_from_positions(config, is_image[b], positions[-2:, b]) for b in range(is_image.shape[0])]

    @classmethod
    def _fitting_grids_from_thw(cls, config, thw: torch.Tensor, n_tokens) -> list[list[tuple[int, int]]] | None:
        """:meth:`_grids_from_thw`, or ``None`` when they do not take exactly each row's image tokens."""
        grids = cls._grids_from_thw(config, thw, n_tokens)
        return grids if [sum(h * w for h, w in row) for row in grids] == list(n_tokens) else None

    @staticmethod
    def _grids_from_thw(config, thw: torch.Tensor, n_tokens) -> list[list[tuple[int, int]]]:
        merge = config.vision_config.spatial_merge_size
        images = [(int(t), int(h) // merge, int(w) // merge) for t, h, w in thw.tolist()]
        grids, i = [], 0
        for n in n_tokens:
            row, held = [], 0
            while held < n and i < len(images):
                t, h, w = images[i]
                row.extend([(h, w)] * t)
                held += t * h * w
                i += 1
            grids.append(row)
        if i != len(images):
            raise ValueError(
                f"{config.model_type}: image_grid_thw describes {len(images)} images but the prompts' image tokens "
                f"only account for {i}."
            )
        return grids

    @staticmethod
    def _grids_from_positions(config, is_image: torch.Tensor, hw: torch.Tensor) -> list[tuple[int, int]]:
        """Split a row's image tokens into runs (one image each, wrapped by vision start/end) and
        read each run's grid from its M-RoPE height/width positions ``hw`` ``[2, L]``."""
        index = torch.nonzero(is_image).flatten()
        if index.numel() == 0:
            return []
        breaks = torch.nonzero(index.diff() != 1).flatten() + 1
        grids = []
        for run in torch.tensor_split(index, breaks.tolist()):
            h, w = hw[:, run]
            height, width = int(h.max() - h.min()) + 1, int(w.max() - w.min()) + 1
            if height * width == 0 or run.numel() % (height * width):
                raise ValueError(
                    f"{config.model_type}: a run of {run.numel()} image tokens does not form a grid "
                    f"({height}x{width} from its position ids); pass image_grid_thw."
                )
            grids.extend([(height, width)] * (run.numel() // (height * width)))
        return grids


class Qwen2_5VLAdapter(Qwen2VLAdapter):
    """Qwen2.5-VL: Qwen2-VL's grids (its window attention is in the vision tower only)."""

    model_types = ("qwen2_5_vl",)
    example_checkpoint = "Qwen/Qwen2.5-VL-7B-Instruct"
