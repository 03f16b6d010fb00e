"""MiniCPM-V 4.6 (``minicpmv4_6``) and 4.7 (``minicpmv4_7``): a global image and its slices, one
grid each.

The image processor resizes an image into a global view and, for large images, ``rows x cols``
slices; every one of them is a NaViT-packed unit of ``target_sizes[i] = (h, w)`` patches. The
SigLIP-like tower merges 2x2 patches by window attention after ``insert_layer_id`` and the merger
merges ``merge_kernel_size`` (2x2) again, ``merger_times`` times, so a unit gives an
``h / 4 x w / 4`` grid of tokens in row-major order (``downsample_mode="4x"`` skips the first
merge: ``h / 2 x w / 2``). There is no Perceiver resampler with a fixed number of queries, as in
earlier MiniCPM-V releases: every token stands for one block of the unit, so each unit is a true
2-D grid. The prompt reads, per image, ``<image_id>N</image_id>`` (``use_image_id``) +
``<image>`` + the global image's tokens + ``</image>``, then for each slice row its slices as
``<slice>`` + tokens + ``</slice>``, slice rows joined by ``\\n``.

Decisions:
- The placeholder tokens are the image keys: the tokenizer's ``image_token``, whose id the model
  reads from ``config.image_token_id`` (``input_ids == image_token_id`` is how the model places the
  features; there is no ``image_bound``). That id is ``None`` in a default config, and such a
  model encodes no image at all (its forward skips ``pixel_values``), so the adapter refuses a
  config without it; the released checkpoints set it.
- ``<image>``, ``</image>``, ``<slice>``, ``</slice>``, ``\\n`` and the image-id tags are text.
- The global image is a grid, and so is every slice: slices are not composed into one grid per
  image, because each is encoded on its own, slices need not share a size (the processor upsamples
  each separately), and 4.6's processor drops the slice arrangement (``grids``) from the inputs.
- Video frames use ``video_token_id`` and are not image keys; several images add their units in
  order.

The grids come from ``target_sizes`` (and ``downsample_mode``, when given): a prefill kwarg before
transformers 5.23, and from 5.23 on an input of the image encoder that ``generate`` runs first,
which the guard records. For beams, 5.17's MiniCPM-V leaves it once per sample, encodes once and
repeats the whole batch's features ``num_beams`` times, so with several samples a beam row gets
another sample's features (a transformers bug; the grids still describe each row's own tokens).
5.17's window-attention merger also takes every unit of a call to have the first one's size.
Pixels are NaViT-packed, every unit of the batch along the last axis of a ``[1, 3, P, n * P]``
``pixel_values`` (``packed_inputs``: contrast streams append their images there). The decoder is
Qwen3.5's hybrid: Gated DeltaNet linear-attention layers keep no keys, so only the
``full_attention`` layers are hooked.
"""

from __future__ import annotations

from .base import Adapter, grids_per_row


class MiniCPMV4_6Adapter(Adapter):
    model_types = ("minicpmv4_6",)
    example_checkpoint = "openbmb/MiniCPM-V-4.6"
    packed_inputs = frozenset({"pixel_values", "pixel_values_videos"})

    def row_grids(self, config, is_image, n_tokens, inputs):
        if not any(n_tokens):
            return [[] for _ in n_tokens]
        sizes = self.required_input(config, inputs, "target_sizes", n_tokens)
        mode = inputs.get("downsample_mode") or config.downsample_mode
        merge_h, merge_w = config.merge_kernel_size
        first = 1 if mode == "4x" else 2  # the window-attention merger halves each side (skipped in "4x")
        down_h, down_w = first * merge_h**config.merger_times, first * merge_w**config.merger_times
        units = [(int(h) // down_h, int(w) // down_w) for h, w in sizes.tolist()]
        grids = grids_per_row(units, n_tokens)
        if grids is None:
            raise ValueError(
                f"{config.model_type}: target_sizes gives images and slices of {[h * w for h, w in units]} tokens, "
                f"which do not split into the rows' {list(n_tokens)} image tokens."
            )
        return grids


class MiniCPMV4_7Adapter(MiniCPMV4_6Adapter):
    """4.7 lays the same units out as 4.6; its canvas M-RoPE positions change nothing here."""

    model_types = ("minicpmv4_7",)
    example_checkpoint = "openbmb/MiniCPM-V-4.7-1B"
