"""LLaVA-1.5 (``llava``): one square grid per image, e.g. 24x24 = 576 tokens for CLIP-L/14 at 336 px."""

from __future__ import annotations

from .base import RepeatedGridAdapter


class LlavaAdapter(RepeatedGridAdapter):
    model_types = ("llava",)
    example_checkpoint = "llava-hf/llava-1.5-7b-hf"

    def grid(self, config) -> tuple[int, int]:
        """``image_size / patch_size`` patches per side; the CLS token is not an image token."""
        if config.vision_feature_select_strategy != "default":
            raise ValueError(
                "llava: only vision_feature_select_strategy='default' (CLS token dropped) is supported; "
                f"this model uses {config.vision_feature_select_strategy!r}."
            )
        side = config.vision_config.image_size // config.vision_config.patch_size
        return side, side
