"""LLaVA-NeXT (``llava_next``) and LLaVA-OneVision (``llava_onevision``): a base grid, then the
anyres tiles merged into one grid, per image.

The model sees every image twice: resized to one tile (the base image, ``side x side`` tokens with
``side = image_size // patch_size``: 24 for CLIP-L/14 at 336 px, 27 for SigLIP at 384 px), and cut
into the tiles of the best ``image_grid_pinpoints`` resolution, whose features are stitched into
one ``rows x cols`` grid and cropped back to the image's aspect ratio ("unpadded"). OneVision then
shrinks that grid bilinearly when it holds more than ``anyres_max_N`` tiles' worth of tokens (by more
than 10 %). The prompt holds, per image, the base grid row-major, then the tile grid row-major with
an ``image_newline`` slot after each of its rows; every slot carries the image token id.

- The base grid is an image key grid, first of its image.
- The merged tile grid is one image key grid, second of its image (``GridSpec`` with
  ``row_stride = cols + 1``).
- The newline slots are not image keys: they hold one learned embedding, no pixels.
- An image encoded without tiles (OneVision in prompts with several images) is its base grid
  followed by a single newline slot, which is not an image key either.
- Several images in a prompt contribute their grids in order; OneVision video tokens have their own
  id and are not image keys.

Grid shapes come from ``image_sizes`` when the forward call has it (mirroring the model's
resolution choice, unpadding and pooling; OneVision's ``batch_num_images`` marks the untiled
images). ``generate`` from transformers 5.23 on encodes images before the prefill and hands over
their features without ``image_sizes`` (see :func:`adapt_hooks.compat.encoded_images`); each image's feature block then shows the shape itself: its newline slots are the
rows equal to its last row (the newline embedding), which fixes the tile grid's row length.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from .. import compat
from ..layout import GridSpec
from .base import Adapter


class LlavaNextAdapter(Adapter):
    model_types = ("llava_next",)
    example_checkpoint = "llava-hf/llava-v1.6-mistral-7b-hf"
    #: Whether the forward call's ``batch_num_images`` makes the images of multi-image rows untiled.
    untiled_multi_image = False

    # -- shapes from the config --------------------------------------------------------------------
    @staticmethod
    def base_side(config) -> int:
        """Tokens per side of the base image and of each tile."""
        vision = config.vision_config
        return int(vision.image_size) // int(vision.patch_size)

    def tile_grid(self, config, height: int, width: int) -> tuple[int, int]:
        """``(rows, cols)`` of the merged tile grid of a ``height x width`` px image, as the model
        builds it: best pinpoint resolution, unpadded to the aspect ratio, then pooled (OneVision)."""
        from transformers.image_processing_utils import select_best_resolution

        tile, side = int(config.vision_config.image_size), self.base_side(config)
        best_h, best_w = select_best_resolution((height, width), config.image_grid_pinpoints)
        rows, cols = best_h // tile * side, best_w // tile * side
        if width / height > cols / rows:
            rows -= 2 * ((rows - int(round(height * (cols / width), 7))) // 2)
        else:
            cols -= 2 * ((cols - int(round(width * (rows / height), 7))) // 2)
        aspect = getattr(config, "vision_aspect_ratio", None)
        if aspect is not None:
            ratio = math.sqrt(rows * cols / (int(aspect.strip("anyres_max_")) * side**2))
            if ratio > 1.1:
                rows, cols = int(rows // ratio), int(cols // ratio)
        return rows, cols

    def image_specs(self, config, side: int, tiles: tuple[int, int] | None) -> list[GridSpec]:
        """One image's grids: the base, then the tile grid with a newline slot per row; an untiled
        image is its base and one newline slot."""
        if tiles is None:
            return [GridSpec(side, side, trailing=1)]
        rows, cols = tiles
        return [GridSpec(side, side), GridSpec(rows, cols, row_stride=cols + 1)]

    # -- per image -----------------------------------------------------------------------------------
    def _images_from_sizes(self, config, sizes, inputs: Mapping[str, object]) -> list[list[GridSpec]]:
        side = self.base_side(config)
        sizes = torch.as_tensor(sizes).reshape(-1, 2).tolist()
        tiled = [True] * len(sizes)
        per_row = inputs.get("batch_num_images")
        if per_row is not None and self.untiled_multi_image:
            tiled = [int(n) == 1 for n in torch.as_tensor(per_row).tolist() for _ in range(int(n))]
            if len(tiled) != len(sizes):
                raise ValueError(
                    f"{config.model_type}: batch_num_images counts {len(tiled)} images "
                    f"but image_sizes has {len(sizes)}."
                )
        return [
            self.image_specs(config, side, self.tile_grid(config, h, w) if tile else None)
            for (h, w), tile in zip(sizes, tiled)
        ]

    def _images_from_features(self, config, features: Sequence[torch.Tensor]) -> list[list[GridSpec]]:
        """Read each image's tile grid from its packed features ``[tokens, hidden]``: the newline
        slots are the rows equal to the last one."""
        side = self.base_side(config)
        base = side * side
        images = []
        for i, feature in enumerate(features):
            n = feature.shape[0]
            if n == base + 1:
                images.append(self.image_specs(config, side, None))
                continue
            tail = feature[base:]
            newline = (tail == feature[-1]).all(-1) if n > base + 1 else tail.new_zeros(0, dtype=torch.bool)
            ends = torch.nonzero(newline).flatten().tolist()
            stride = ends[0] + 1 if ends else 0
            expected = list(range(stride - 1, n - base, stride)) if stride > 1 else None
            if ends != expected:
                raise ValueError(
                    f"{config.model_type}: image {i}'s {n} feature rows are not a {side}x{side} base grid followed by "
                    "tile-grid rows each ending in the newline embedding; pass image_sizes with the forward call."
                )
            images.append(self.image_specs(config, side, (len(ends), stride - 1)))
        return images

    def row_grids(self, config, is_image, n_tokens, inputs):
        sizes = inputs.get("image_sizes")
        encoded = compat.encoded_images(inputs)
        if sizes is not None:
            images = self._images_from_sizes(config, sizes, inputs)
        elif compat.image_features(encoded) is not None:
            images = self._images_from_features(config, list(compat.image_features(encoded)))
        elif any(n_tokens):
            raise ValueError(
                f"{config.model_type}: the prompt has image tokens but the forward call has neither `image_sizes` "
                "nor encoded images (`mm_encoder_outputs`); pass image_sizes as the processor returns it."
            )
        else:
            return [[] for _ in n_tokens]
        grids, i = [], 0
        for b, n in enumerate(n_tokens):
            row, held = [], 0
            while held < n and i < len(images):
                row.extend(images[i])
                held += sum(spec.span for spec in images[i])
                i += 1
            if held != n:
                raise ValueError(
                    f"{config.model_type}: row {b} has {n} image tokens but its images take {held} "
                    "(the prompt's image tokens do not match the images passed)."
                )
            grids.append(row)
        if i != len(images):
            raise ValueError(
                f"{config.model_type}: {len(images)} images were passed but the prompts' image tokens "
                f"only account for {i}."
            )
        return grids


class LlavaOnevisionAdapter(LlavaNextAdapter):
    model_types = ("llava_onevision",)
    example_checkpoint = "llava-hf/llava-onevision-qwen2-7b-ov-hf"
    untiled_multi_image = True


class LlavaNextVideoAdapter(LlavaNextAdapter):
    """LLaVA-NeXT-Video's images: LLaVA-NeXT's base grid and anyres tiles (its video frames,
    ``<video>`` tokens, are not image keys)."""

    model_types = ("llava_next_video",)
    example_checkpoint = "llava-hf/LLaVA-NeXT-Video-7B-hf"
