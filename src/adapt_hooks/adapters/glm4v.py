"""GLM-4.1V (``glm4v``), GLM-4.5V (``glm4v_moe``) and GLM-4.6V (``glm46v``): dynamic resolution, one grid per image.

The vision tower cuts an image into patches of ``patch_size`` = 14 px and merges each
``spatial_merge_size`` x ``spatial_merge_size`` = 2x2 block into one token, so the language model
sees one token per 28 px, row-major: an ``image_grid_thw`` of ``(1, h, w)`` patches gives an
``h/2 x w/2`` grid. An image reaches the prompt as ``<|begin_of_image|>`` + its ``<|image|>``
tokens + ``<|end_of_image|>``. The grids are read as for Qwen2-VL: from ``image_grid_thw`` when
the forward call has it, else from the height and width channels of the 4-channel M-RoPE
``position_ids`` (text, t, h, w) that ``generate`` passes.

- The ``<|image|>`` tokens of an image are its grid of image keys.
- ``<|begin_of_image|>`` and ``<|end_of_image|>`` are not image keys: they carry their own ids and no pixels.
- Video frames are not image keys, although they use the same ``<|image|>`` token: every token
  between ``<|begin_of_video|>`` and ``<|end_of_video|>`` is excluded, as the processor's
  ``mm_token_type_ids`` do.
- Several images in a prompt are several grids, in order of appearance.
"""

from __future__ import annotations

import torch

from .qwen2_vl import Qwen2VLAdapter


class Glm4vAdapter(Qwen2VLAdapter):
    model_types = ("glm4v", "glm4v_moe")
    example_checkpoint = "zai-org/GLM-4.1V-9B-Thinking"

    def image_mask(self, config, input_ids: torch.Tensor) -> torch.Tensor:
        """``<|image|>`` tokens outside ``<|begin_of_video|>`` ... ``<|end_of_video|>`` segments."""
        is_token = input_ids == self.image_token_id(config)
        start, end = getattr(config, "video_start_token_id", None), getattr(config, "video_end_token_id", None)
        if start is None or end is None:
            return is_token
        in_video = (input_ids == start).cumsum(-1) > (input_ids == end).cumsum(-1)
        return is_token & ~in_video


class Glm46vAdapter(Glm4vAdapter):
    model_types = ("glm46v",)
    example_checkpoint = "zai-org/GLM-4.6V-Flash"
