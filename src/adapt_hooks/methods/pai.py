"""PAI, "Paying More Attention to Image" (Liu et al., ECCV 2024, arXiv 2407.21771).

At every decode step, in the layers from the third on, the new query's attention logits on the
image keys are amplified before the softmax: ``l ← l + α·|l|`` (after the mask, every head, only
the image keys of each row). Optionally (``cfg_gamma``) the next-token log-probabilities are then
refined against an image-free stream, as in classifier-free guidance:
``s = log_softmax(l)``, ``u = log_softmax(l_image-free)``, ``γ (s − u) + u``, with the tokens whose
``s`` is below ``log(cfg_cutoff) + max s`` removed. The amplification is off in that stream.

Differences from the authors' code, on purpose: image positions come from the adapter per row
(never one span for the whole batch), every family and attention implementation is served, and
the prefill is left untouched like every decode-time method of this library (the first answer
token is not amplified). The image-free stream keeps the prompt's length and hides the image
keys from every query (see :meth:`adapt_hooks.Adapter.hide_images`), rather than deleting the
image tokens.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from ..validation import check_number
from .base import AttentionStep, Method, Prompt

#: PAI's first amplified layer in LLaVA-1.5's 32 decoder layers; other depths use the same relative depth.
FIRST_LAYER, OF_LAYERS = 2, 32


class PAI(Method):
    """Amplify image attention at decode steps (``alpha``), in ``layers`` (default: from relative
    depth 2/32 on, among the hooked layers), with PAI's optional CFG step (``cfg_gamma``, e.g. 1.1)."""

    name = "pai"
    edits_attention = True

    def __init__(
        self, alpha: float = 0.2, layers: Sequence[int] | None = None, cfg_gamma: float | None = None, cfg_cutoff: float = 0.1
    ) -> None:
        self.alpha = check_number("PAI(alpha=...)", alpha)
        self.layers = None if layers is None else sorted({int(i) for i in layers})
        if self.layers is not None and (not self.layers or self.layers[0] < 0):
            raise ValueError(f"PAI(layers=...) must list decoder-layer indices >= 0, got {layers!r}.")
        self.cfg_gamma = None if cfg_gamma is None else check_number("PAI(cfg_gamma=...)", cfg_gamma)
        self.cfg_cutoff = check_number("PAI(cfg_cutoff=...)", cfg_cutoff)
        if self.cfg_cutoff > 1:
            raise ValueError(f"PAI(cfg_cutoff=...) is a probability ratio in [0, 1], got {cfg_cutoff!r}.")
        self.start(None)

    @property
    def contrast(self) -> str | None:  # the image-free stream of the CFG step, when it is on
        return None if self.cfg_gamma is None else "image-free prompt"

    @property
    def edits_logits(self) -> bool:
        return self.cfg_gamma is not None

    def settings(self) -> Mapping[str, object]:
        return {"alpha": self.alpha, "layers": self.layers, "cfg_gamma": self.cfg_gamma, "cfg_cutoff": self.cfg_cutoff}

    def select_layers(self, hooked: Sequence[int], n_layers: int) -> list[int]:
        if self.layers is not None:
            return list(self.layers)
        first = math.floor(FIRST_LAYER * n_layers / OF_LAYERS + 0.5)
        return [i for i in hooked if i >= first]

    def start(self, prompt: Prompt) -> None:
        self.prompt = prompt
        self._rows: dict[torch.device, torch.Tensor] = {}  # [B, 1] rows with an image, per device

    def attend(self, step: AttentionStep) -> None:
        if self.alpha == 0:  # nothing to amplify: leave the step to the model's kernel
            return
        index = step.image_index()
        logits = step.logits
        image = logits.gather(-1, index)
        amplified = self.alpha * image.abs()
        if step.valid is not None:  # padding slots point at key 0, which may be masked (-inf): add exactly 0
            amplified = torch.where(step.valid[:, None, None, :], amplified, 0.0)
        step.set_logits(logits.scatter_add(-1, index, amplified))
        step.mark(self._image_rows(logits.device))

    def contrast_inputs(self, inputs: dict[str, object], prompt: Prompt, *, prefill: bool, length: int) -> None:
        prompt.adapter.hide_images(inputs, prompt.image_tokens, length)

    def next_token(self, logits: torch.Tensor, contrast: torch.Tensor | None) -> torch.Tensor:
        """``γ (s − u) + u`` with ``s``, ``u`` the log-probabilities with and without the image,
        and the tokens below ``log(cfg_cutoff) + max s`` removed; rows without an image untouched."""
        s = torch.log_softmax(logits.float(), -1)
        u = torch.log_softmax(contrast.float(), -1)
        guided = self.cfg_gamma * (s - u) + u
        cutoff = s.amax(-1, keepdim=True) + (math.log(self.cfg_cutoff) if self.cfg_cutoff > 0 else -math.inf)
        guided = guided.masked_fill(s < cutoff, float("-inf"))
        rows = self._image_rows(logits.device)[:, :, None]
        return torch.where(rows, guided, logits.float())

    def _image_rows(self, device: torch.device) -> torch.Tensor:
        rows = self._rows.get(device)
        if rows is None:
            rows = self._rows[device] = self.prompt.layout.has_image.to(device)[:, None]
        return rows

    def reorder(self, index: torch.Tensor) -> None:
        self._rows = {device: rows.index_select(0, index.to(device)) for device, rows in self._rows.items()}

    def state_tensors(self) -> list[torch.Tensor]:
        return list(self._rows.values())
