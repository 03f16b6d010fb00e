"""VCD, Visual Contrastive Decoding (Leng et al., CVPR 2024, arXiv 2311.16922).

Every next-token distribution is contrasted with the one the model gives for a distorted image:
``(1 + α) · l(v) − α · l(v′)``, where ``v′`` is the image with diffusion forward noise at step
``noise_step`` of VCD's own schedule (:func:`adapt_hooks.noise.vcd_cumulative_alpha`), and the
adaptive plausibility constraint removes the tokens whose probability under the original image is
below ``β`` times the most likely one's (``l(v) < log β + max l(v)``).

It works inside ``model.generate`` (greedy, sampling, beam search) rather than a private loop: the
noised-image rows travel in the same forward calls as the user's (see
:mod:`adapt_hooks.hooks.streams`), and the contrasted logits are what ``generate`` samples from.
The noise is seeded (``seed``) and depends on an image's shape alone, so a run is reproducible and
a row gets the same contrast image in any batch; rows without an image are left alone.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from .. import compat, noise
from ..validation import check_number
from .base import Method, Prompt


class VCD(Method):
    """Visual contrastive decoding: ``alpha`` weighs the contrast, ``beta`` the plausibility
    cutoff, ``noise_step`` (0–999) the distortion of the contrast image, ``seed`` its noise."""

    name = "vcd"
    contrast = "noised image"
    edits_logits = True

    def __init__(self, alpha: float = 1.0, beta: float = 0.1, noise_step: int = 500, *, seed: int | None = 0) -> None:
        self.alpha = check_number("VCD(alpha=...)", alpha)
        self.beta = check_number("VCD(beta=...)", beta)
        if self.beta > 1:
            raise ValueError(f"VCD(beta=...) is a probability ratio in [0, 1], got {beta!r}.")
        if isinstance(noise_step, bool) or not isinstance(noise_step, int):
            raise ValueError(f"VCD(noise_step=...) must be an integer step in 0..999, got {noise_step!r}.")
        self.alpha_bar = noise.vcd_cumulative_alpha(noise_step)  # checks the range
        self.noise_step = noise_step
        self.seed = seed
        self.start(None)

    def settings(self) -> Mapping[str, object]:
        return {"alpha": self.alpha, "beta": self.beta, "noise_step": self.noise_step, "seed": self.seed}

    def start(self, prompt: Prompt | None) -> None:
        self.prompt = prompt
        self._rows: dict[torch.device, torch.Tensor] = {}  # [B, 1, 1] rows with an image, per device

    def noised(self, pixels: torch.Tensor, grid_thw: torch.Tensor | None = None) -> torch.Tensor:
        """The contrast image: ``sqrt(ᾱ) x + sqrt(1 − ᾱ) ε`` on the processor's (normalised) pixels.

        ``ε`` depends only on ``seed`` and the image's shape, never on the batch: one draw of
        ``[C, H, W]`` serves every image (or tile) of a ``[..., C, H, W]`` tensor, and for
        flattened patches ``[patches, D]`` with ``grid_thw`` (Qwen-style) each image gets the first
        ``t·h·w`` rows of one draw. So the beams of a prompt, and a row in or out of a batch, see
        the same contrast image. All-zero padding images (Idefics3's) stay zero.
        """
        if pixels.ndim >= 4:
            eps = self._draw(pixels.shape[-3:]).expand(pixels.shape)
        elif grid_thw is not None and pixels.ndim == 2:
            sizes = grid_thw.prod(-1).tolist()
            eps = self._draw((max(sizes), pixels.shape[1]))
            eps = torch.cat([eps[:n] for n in sizes])
        else:
            eps = self._draw(pixels.shape)
        noisy = noise.forward_noise(pixels, self.alpha_bar, eps)
        if pixels.ndim >= 4:  # padding images (all zero, as Idefics3's processor pads) stay padding
            padding = (pixels == 0).flatten(-3).all(-1)
            noisy = noisy.masked_fill(padding[..., None, None, None], 0)
        return noisy

    def _draw(self, shape) -> torch.Tensor:
        generator = None if self.seed is None else torch.Generator().manual_seed(self.seed)
        return torch.randn(tuple(shape), generator=generator)

    def contrast_inputs(self, inputs: dict[str, object], prompt: Prompt, *, prefill: bool, length: int) -> None:
        if not prefill:
            return  # later steps: the same tokens as the user's rows
        name = compat.pixel_keyword(inputs)
        if name is None:
            raise ValueError("VCD needs the prompt's pixel_values to noise; this prefill brings none.")
        inputs[name] = self.noised(inputs[name], inputs.get("image_grid_thw"))

    def next_token(self, logits: torch.Tensor, contrast: torch.Tensor | None) -> torch.Tensor:
        original = logits.float()
        contrasted = (1 + self.alpha) * original - self.alpha * contrast.float()
        cutoff = original.amax(-1, keepdim=True) + (math.log(self.beta) if self.beta > 0 else -math.inf)
        contrasted = contrasted.masked_fill(original < cutoff, float("-inf"))
        return torch.where(self._with_image(logits.device), contrasted, original)

    def _with_image(self, device: torch.device) -> torch.Tensor:
        rows = self._rows.get(device)
        if rows is None:
            rows = self._rows[device] = self.prompt.layout.has_image.to(device)[:, None, None]
        return rows

    def reorder(self, index: torch.Tensor) -> None:
        self._rows = {device: rows.index_select(0, index.to(device)) for device, rows in self._rows.items()}

    def state_tensors(self) -> list[torch.Tensor]:
        return list(self._rows.values())
