"""The opt-in fallback adapter: any decoder-only VLM whose prompt carries image placeholder tokens.

It finds the image tokens by the config's placeholder id (``image_token_id``, ``image_token_index``
or ``image_patch_id``, on the model's or its text config) and hooks every layer whose self-attention
cache keeps every key. Grids come from what the forward call and the config say, in this order:

1. ``image_grid_thw`` with the vision config's ``spatial_merge_size`` (Qwen-style processors), or
   the height and width channels of M-RoPE ``position_ids``: one ``h/m x w/m`` grid per image;
2. a fixed count of tokens per image (``mm_tokens_per_image``, ``image_seq_length`` or
   ``num_image_tokens``) that is a square: one square grid per image;
3. otherwise one square grid per row when the row's image-token count is a square, else the
   image tokens as one row-major sequence (a ``1 x N`` grid).

Degraded where the guess is wrong: with case 3, or when an image carries separators, newline
slots or tiles the adapter does not know about, the anchor's spatial parts (the border band, the
smoothness and spectral scores of layer scoring, the refinement's blur) act on a grid that is not
the image's. AMC, visual mass and steering need no grid and stay exact. Used only when asked
for: ``guard(model, adapter="generic")``; an unknown model type otherwise gets the clear error.
"""

from __future__ import annotations

import math

from .base import Adapter
from .qwen2_vl import Qwen2VLAdapter

PLACEHOLDERS = ("image_token_id", "image_token_index", "image_patch_id")
TOKENS_PER_IMAGE = ("mm_tokens_per_image", "image_seq_length", "num_image_tokens")


class GenericAdapter(Adapter):
    model_types = ()
    example_checkpoint = ""

    def image_token_id(self, config) -> int:
        for source in (config, config.get_text_config()):
            for name in PLACEHOLDERS:
                value = getattr(source, name, None)
                if isinstance(value, int):
                    return value
        raise ValueError(
            f"{config.model_type}: the generic adapter found no image placeholder id in the config "
            f"({', '.join(PLACEHOLDERS)}): set config.image_token_id to the id the processor writes for each image "
            "token, or register an adapter (adapt_hooks.register_adapter)."
        )

    def row_grids(self, config, is_image, n_tokens, inputs):
        thw = inputs.get("image_grid_thw")
        if getattr(getattr(config, "vision_config", None), "spatial_merge_size", None):
            grids = None if thw is None else Qwen2VLAdapter._fitting_grids_from_thw(config, thw, n_tokens)
            if grids is None:
                grids = Qwen2VLAdapter._grids_from_mrope(config, is_image, inputs)
            if grids is not None:
                return grids
        per_image = next((getattr(config, name) for name in TOKENS_PER_IMAGE if isinstance(getattr(config, name, None), int)), None)
        side = math.isqrt(per_image) if per_image else 0
        rows = []
        for n in n_tokens:
            if per_image and side * side == per_image and n % per_image == 0:
                rows.append([(side, side)] * (n // per_image))
            elif n and math.isqrt(n) ** 2 == n:
                rows.append([(math.isqrt(n),) * 2])
            else:
                rows.append([(1, n)] if n else [])
        return rows
