"""Kimi K2.5 / K2.6 (``kimi_k25``): MoonViT-style native-resolution images, one grid per image.

The image processor resizes each image (padding it to a multiple of ``patch_size *
merge_kernel_size``) and patchifies it row-major into an ``image_grid_thw`` row of ``(1, h, w)``
patches; the vision tower merges every ``merge_kernel_size`` block (2 x 2 in the released
checkpoints) into one token, so an image is an ``h / kh x w / kw`` grid of tokens in row-major
order. An image reaches the prompt as ``<|media_begin|>image<|media_content|>`` + its
``<|media_pad|>`` tokens + ``<|media_end|>``.

Decisions:
- The ``<|media_pad|>`` tokens (``image_token_id``) are the image keys; the ``<|media_begin|>``,
  ``<|media_content|>`` and ``<|media_end|>`` markers and the word ``image`` are text.
- Video chunks use their own placeholder (``video_token_id``) and are not image keys.
- Several images in a row simply contribute their grids in order.

The grids come from ``image_grid_thw``: a prefill kwarg before transformers 5.23, and from 5.23
on an input of the image encoder that ``generate`` runs before the prefill, which the guard records
and hands back. For beams, 5.17's ``generate`` repeats it in place (each image ``num_beams`` times)
as it does ``pixel_values``, whose patches it so duplicates one by one: the model's image features
are then scrambled, with or without a guard (a transformers bug, gone from 5.23). The grids are
read in place order first, so a prompt of several images of one token count but different shapes
could be misread there; the tokens' features are meaningless in that case anyway. The decoder is
DeepSeek-V3's (multi-head latent attention, MoE MLPs): every layer attends over the whole cache
and is hooked.
"""

from __future__ import annotations

from .base import Adapter, grids_per_row


class KimiK25Adapter(Adapter):
    model_types = ("kimi_k25",)
    example_checkpoint = "moonshotai/Kimi-K2.6"

    def row_grids(self, config, is_image, n_tokens, inputs):
        if not any(n_tokens):
            return [[] for _ in n_tokens]
        thw = self.required_input(config, inputs, "image_grid_thw", n_tokens)
        kernel_h, kernel_w = config.vision_config.merge_kernel_size
        units = [(int(h) // kernel_h, int(w) // kernel_w) for _, h, w in thw.tolist()]
        grids = grids_per_row(units, n_tokens)
        if grids is None:
            raise ValueError(
                f"{config.model_type}: image_grid_thw gives images of {[h * w for h, w in units]} tokens, which do not "
                f"split into the rows' {list(n_tokens)} image tokens."
            )
        return grids
