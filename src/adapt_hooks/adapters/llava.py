"""LLaVA-1.5 (``llava``): one square grid per image, e.g. 24x24 = 576 tokens for CLIP-L/14 at 336 px."""

from __future__ import annotations

from .base import Adapter


class LlavaAdapter(Adapter):
    model_types = ("llava",)
    example_checkpoint = "llava-hf/llava-1.5-7b-hf"

    def row_grids(self, config, is_image, n_tokens, inputs):
        vision = config.vision_config
        side = vision.image_size // vision.patch_size
        if config.vision_feature_select_strategy != "default":
            raise ValueError(
                "llava: only vision_feature_select_strategy='default' (CLS token dropped) is supported; "
                f"this model uses {config.vision_feature_select_strategy!r}."
            )
        per_image = side * side
        grids = []
        for b, n in enumerate(n_tokens):
            if n % per_image:
                raise ValueError(
                    f"llava: row {b} has {n} image tokens, not a multiple of {per_image} "
                    f"({side}x{side} patches of {vision.patch_size} px at {vision.image_size} px)."
                )
            grids.append([(side, side)] * (n // per_image))
        return grids
