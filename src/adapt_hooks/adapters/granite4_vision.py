"""Granite 4 Vision (``granite4_vision``): LLaVA-NeXT's anyres layout at the Window Q-Former's
downsampled resolution, per image.

Each tile (the base image and the anyres crops) of ``image_size // patch_size`` patches per side is
shrunk by ``downsample_rate`` (e.g. ``"4/8"``: 24 -> 12 tokens per side) by the Window Q-Former
projectors, then laid out exactly as in LLaVA-NeXT (see :mod:`.llava_next`): the base grid
row-major, then the crops stitched into one ``rows x cols`` grid, unpadded to the image's aspect
ratio, with an ``image_newline`` slot after each of its rows; every slot carries the image token
id, as the processor counts them.

- The base grid is an image key grid, first of its image; the merged tile grid the second
  (``GridSpec`` with ``row_stride = cols + 1``).
- The newline slots are not image keys: they hold one learned embedding, no pixels.
- The image features do not enter at the embeddings (those positions are zeroed) but are added to
  the hidden states of the image positions before the decoder layers of ``deepstack_layer_map``
  and ``spatial_target_layers``; the image keys are the same positions in every layer.
- The text decoder is a dense Granite one: every layer is full attention and is hooked.

Grid shapes come from ``image_sizes`` (the guard adds it back where ``generate`` encodes images
before the prefill).
"""

from __future__ import annotations

from fractions import Fraction

from .llava_next import LlavaNextAdapter


class Granite4VisionAdapter(LlavaNextAdapter):
    model_types = ("granite4_vision",)
    example_checkpoint = "ibm-granite/granite-4.0-3b-vision"

    @staticmethod
    def base_side(config) -> int:
        """Tokens per side of the base image and of each tile, after the Q-Former's downsampling."""
        side = int(config.vision_config.image_size) // int(config.vision_config.patch_size)
        return int(side * Fraction(config.downsample_rate)) if config.downsample_rate else side
