"""Mistral Large 4 (``mistral_large4``): Mistral 3's Pixtral image grids in a DSA decoder.

Images reach the prompt exactly as in Mistral 3 (the same Pixtral processor): one ``[IMG]`` run per
grid row, each followed by ``[IMG_BREAK]``, the last by ``[IMG_END]``; one token per
``patch_size * spatial_merge_size`` px (28). The grids are read the same way (see
:mod:`adapt_hooks.adapters.mistral3`): only ``[IMG]`` tokens are image keys, one grid per image.

The decoder is DeepSeek-V3.2-style sparse attention (``indexed_attention`` layers): MLA attention
over a latent KV cache, and a lightning indexer that picks, per query, the ``index_topk`` keys
(2048 in the released checkpoint) it may attend to; ``"shared"`` layers reuse the previous layer's
pick. The cache keeps every key, so every layer is hooked. transformers folds the pick into the
attention mask only when the attention implementation is literally ``"eager"`` or ``"sdpa"`` and
otherwise hands it to the kernel as ``indices=``; the guard's attention function, registered under
its own name, folds it into the mask itself the same way (:func:`adapt_hooks.compat.index_mask`),
so the guarded model attends to the same keys, and the guard watches and steers attention over the
keys the indexer selected: an image key the indexer left out of a query's pick stays masked out for
that query (a prompt shorter than ``index_topk`` has every key selected). The queries' position-
dependent scaling is applied before the attention function, so the guard sees it.
"""

from __future__ import annotations

from .mistral3 import Mistral3Adapter


class MistralLarge4Adapter(Mistral3Adapter):
    model_types = ("mistral_large4",)
    example_checkpoint = "mistralai/Mistral-Large-4-1T-A52B"
