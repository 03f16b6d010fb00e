"""The image part of Qwen2.5-Omni's and Qwen3-Omni's thinkers (``qwen2_5_omni_thinker``,
``qwen3_omni_moe_thinker``): Qwen2.5-VL's and Qwen3-VL's vision towers, one grid per image.

Images reach the thinker's prompt as in Qwen2.5-VL / Qwen3-VL (``<|vision_start|>`` + image pad
tokens + ``<|vision_end|>``, one token per 2x2 patch block, row-major), so the grids are read the
same way: from ``image_grid_thw``, else from the M-RoPE ``position_ids``. Audio and video tokens
are not image keys. Guard the thinker (``model.thinker`` of the full Omni model, or the thinker
loaded on its own): the talker generates speech from the thinker's hidden states and has no
image keys.
"""

from __future__ import annotations

from .qwen2_vl import Qwen2VLAdapter


class QwenOmniThinkerAdapter(Qwen2VLAdapter):
    model_types = ("qwen2_5_omni_thinker", "qwen3_omni_moe_thinker")
    example_checkpoint = "Qwen/Qwen2.5-Omni-7B"

    def row_grids(self, config, is_image, n_tokens, inputs):
        """As Qwen2-VL; where ``image_grid_thw`` does not fit the rows (transformers before 5.23
        repeats each image's entry for beams instead of each row's), the M-RoPE positions decide."""
        thw = inputs.get("image_grid_thw")
        if thw is not None:
            try:
                grids = self._fitting_grids_from_thw(config, thw, n_tokens)
            except ValueError:  # more images than the rows' tokens take
                grids = None
            if grids is not None:
                return grids
            inputs = {k: v for k, v in inputs.items() if k != "image_grid_thw"}
        return super().row_grids(config, is_image, n_tokens, inputs)
