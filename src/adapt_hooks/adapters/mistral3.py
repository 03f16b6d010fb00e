"""Mistral 3 (``mistral3``, Pixtral vision): one grid per image, at the image's own size.

The Pixtral tower sees the image at its (resized) size in patches of ``patch_size`` px and merges
``spatial_merge_size`` x ``spatial_merge_size`` patches into one token, so an image of H x W px gives
a grid of ``H // (patch * merge)`` rows by ``W // (patch * merge)`` columns, row-major. An image
reaches the prompt as one ``[IMG]`` run per grid row, each run followed by ``[IMG_BREAK]``,
except the last, which is followed by ``[IMG_END]``.

- Only ``[IMG]`` tokens are image keys, so each image is a contiguous ``rows x columns`` grid.
- ``[IMG_BREAK]`` and ``[IMG_END]`` are not image keys: they carry their own ids and no pixels.
- The grid is read from the prompt itself: runs of ``[IMG]`` are grid rows, and an image ends at
  the run followed by the token that follows the row's last image token (``[IMG_END]``). This works
  whether or not the prefill receives ``image_sizes`` (``generate`` encodes images beforehand and
  passes no sizes); when it does, the grids are checked against them.
- Several images in a prompt are several grids, in order.
- Text models with a sliding window are refused: their cache drops the image keys once the sequence
  outgrows the window (the released Mistral 3 checkpoints have none).
"""

from __future__ import annotations

import torch

from .base import Adapter


class Mistral3Adapter(Adapter):
    model_types = ("mistral3",)
    example_checkpoint = "mistralai/Mistral-Small-3.1-24B-Instruct-2503"

    def layout(self, config, input_ids, inputs):
        # row_grids reads the separator tokens, which only input_ids show (it may come positionally)
        return super().layout(config, input_ids, {**inputs, "input_ids": input_ids})

    def row_grids(self, config, is_image, n_tokens, inputs):
        input_ids = inputs["input_ids"]
        grids = [self._grids_of_row(config, is_image[b], input_ids[b]) for b in range(len(n_tokens))]
        sizes = inputs.get("image_sizes")
        if sizes is not None:
            step = config.vision_config.patch_size * config.spatial_merge_size
            expected = [(int(h) // step, int(w) // step) for h, w in torch.as_tensor(sizes).tolist()]
            found = [grid for row in grids for grid in row]
            if found != expected:
                raise ValueError(
                    f"mistral3: the prompts' [IMG] rows form grids {found} but image_sizes gives {expected} "
                    f"({step} px per token)."
                )
        return grids

    @staticmethod
    def _grids_of_row(config, is_image: torch.Tensor, ids: torch.Tensor) -> list[tuple[int, int]]:
        """Split one row's ``[IMG]`` runs (grid rows) into images at the image-end token."""
        index = torch.nonzero(is_image).flatten()
        if index.numel() == 0:
            return []
        last_of_run = torch.cat([index.diff() != 1, index.new_ones(1, dtype=torch.bool)])
        ends = index[last_of_run]
        widths = torch.diff(torch.cat([index.new_full((1,), -1), torch.nonzero(last_of_run).flatten()]))
        after = torch.where(ends + 1 < ids.shape[0], ids[(ends + 1).clamp(max=ids.shape[0] - 1)], -1)
        following, widths = after.tolist(), widths.tolist()
        end_id = following[-1]  # the token after the row's last image token closes every image
        grids, rows = [], []
        for width, token in zip(widths, following):
            rows.append(width)
            if token == end_id:
                if len(set(rows)) != 1:
                    raise ValueError(
                        f"{config.model_type}: an image's [IMG] rows have different lengths {rows}; "
                        "the prompt does not hold whole images."
                    )
                grids.append((len(rows), rows[0]))
                rows = []
        return grids
