"""Diffusion forward noise ``x_t = sqrt(ᾱ_t) x + sqrt(1 − ᾱ_t) ε`` under two schedules: VAG-DPO's
rejected ("blind") image (linear β from 1e-4 to 0.02 over 1000 steps, as in VAG-DPO) and VCD's
distorted image (``β = sigmoid(linspace(−6, 6, 1000)) · (5e−3 − 1e−5) + 1e−5``, Leng et al. 2024)."""

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
    return forward_noise(pixels, cumulative_alpha(step), torch.randn(pixels.shape, generator=generator))


def noise_image(image, step: int = NOISE_STEP, generator: torch.Generator | None = None):
    """The noise-injected ("blind") PIL image: pixels mapped to [-1, 1], noised, mapped back and clipped."""
    import numpy as np
    from PIL import Image

    pixels = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1)
    noisy = (add_noise(pixels, step, generator) + 1) * 127.5
    return Image.fromarray(noisy.round().clamp(0, 255).to(torch.uint8).numpy(), mode="RGB")


def vcd_cumulative_alpha(step: int, steps: int = NOISE_STEPS) -> float:
    """VCD's ``ᾱ_t = Π_{s=0..t} (1 − β_s)`` (0-based ``t``, as its code indexes the schedule)."""
    if not 0 <= step < steps:
        raise ValueError(f"VCD's noise step must lie in 0..{steps - 1}, got {step}.")
    betas = torch.sigmoid(torch.linspace(-6, 6, steps, dtype=torch.float64)) * (5e-3 - 1e-5) + 1e-5
    return float(torch.prod(1 - betas[: step + 1]))


def forward_noise(pixels: torch.Tensor, alpha_bar: float, noise: torch.Tensor) -> torch.Tensor:
    """``sqrt(ᾱ) x + sqrt(1 − ᾱ) ε`` in the dtype of ``pixels``, computed in float32."""
    noisy = alpha_bar**0.5 * pixels.float() + (1 - alpha_bar) ** 0.5 * noise.to(pixels.device, torch.float32)
    return noisy.to(pixels.dtype)
