"""Diffusion forward noise ``x_t = sqrt(ᾱ_t) x + sqrt(1 − ᾱ_t) ε``: VAG-DPO's rejected ("blind")
image (a linear β schedule, spec section 4)."""

from __future__ import annotations

import torch

NOISE_STEPS, NOISE_STEP = 1000, 500


def cumulative_alpha(step: int = NOISE_STEP, steps: int = NOISE_STEPS, beta_start: float = 1e-4, beta_end: float = 0.02) -> float:
    """``ᾱ_t = Π_{s=1..t} (1 − β_s)`` of a linear β schedule over ``steps`` diffusion steps."""
    if not 0 <= step <= steps:
        raise ValueError(f"noise step must lie in 0..{steps}, got {step}.")
    betas = torch.linspace(beta_start, beta_end, steps, dtype=torch.float64)
    return float(torch.prod(1 - betas[:step]))


def add_noise(pixels: torch.Tensor, step: int = NOISE_STEP, generator: torch.Generator | None = None) -> torch.Tensor:
    """Diffusion forward noise ``sqrt(ᾱ_t) x + sqrt(1 − ᾱ_t) ε`` on ``x`` in [-1, 1]."""
    alpha = cumulative_alpha(step)
    noise = torch.randn(pixels.shape, generator=generator)
    return alpha**0.5 * pixels + (1 - alpha) ** 0.5 * noise


def noise_image(image, step: int = NOISE_STEP, generator: torch.Generator | None = None):
    """The noise-injected ("blind") PIL image: pixels mapped to [-1, 1], noised, mapped back and clipped."""
    import numpy as np
    from PIL import Image

    pixels = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1)
    noisy = (add_noise(pixels, step, generator) + 1) * 127.5
    return Image.fromarray(noisy.round().clamp(0, 255).to(torch.uint8).numpy(), mode="RGB")
