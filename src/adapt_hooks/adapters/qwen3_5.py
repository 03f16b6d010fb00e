"""Qwen3.5 (``qwen3_5``) and its MoE variant (``qwen3_5_moe``): Qwen3-VL's image grids in a hybrid decoder.

Images reach the prompt as in Qwen3-VL (``<|vision_start|>`` + ``<|image_pad|>`` tokens +
``<|vision_end|>``; one token per 2x2 block of 16 px patches, row-major, an ``image_grid_thw`` of
``(1, h, w)`` patches giving an ``h/2 x w/2`` grid), so the grids are read the same way.

The decoder is hybrid: three of every four layers are Gated DeltaNet linear attention, which keeps
a recurrent state instead of the keys, so no attention over image keys exists there to watch or
steer. Only the ``full_attention`` layers (``layer_types``; every fourth layer in the released
checkpoints) are hooked; ``guard(layers=...)`` refuses the others.
"""

from __future__ import annotations

from .qwen2_vl import Qwen2VLAdapter


class Qwen3_5Adapter(Qwen2VLAdapter):
    model_types = ("qwen3_5", "qwen3_5_moe")
    example_checkpoint = "Qwen/Qwen3.5-9B"
