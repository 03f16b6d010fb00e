"""LLaVA-1.5 (``llava``) and the images of Video-LLaVA (``video_llava``): one square grid per image,
e.g. 24x24 = 576 tokens for CLIP-L/14 at 336 px (16x16 for Video-LLaVA at 224 px). Video-LLaVA's
video frames (``<video>`` tokens) are not image keys."""

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


class VideoLlavaAdapter(LlavaAdapter):
    model_types = ("video_llava",)
    example_checkpoint = "LanguageBind/Video-LLaVA-7B-hf"
