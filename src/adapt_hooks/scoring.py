"""Layer scoring, fusion and refinement of anchor attention maps (ADAPT spec, section 1, items 2, 3, 5).

Pure tensor maths, batched over any leading dims and computed in float32 whatever the input dtype.
Maps are head-mean image-attention maps on an H x W grid; the layer axis L sits right before the grid.
No Python loops over layers or rows and no host syncs, except the finiteness check on inputs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "COMBINED_WEIGHTS", "PAPER_WEIGHTS", "D_STAR", "border_mask", "combine", "fuse",
    "fusion_weights", "layer_scores", "minmax", "refine", "refine_map", "above_percentile",
]

COMBINED_WEIGHTS: dict[str, float] = {"boundary": 0.25, "spectral": 0.30, "smooth": 0.15, "focus": 0.20, "position": 0.10}
PAPER_WEIGHTS: dict[str, float] = {"spectral": 0.4, "smooth": 0.3, "focus": 0.3}
D_STAR = 20 / 31  # relative depth of layer 20 in a 32-layer model (peak of the position score)
_EPS = 1e-12  # a map whose max - min is below this counts as constant
_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])


def _check_finite(x: Tensor, name: str) -> None:
    """Raise ValueError if `x` holds NaN or inf (one host sync; used outside the decode loop)."""
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or inf values")


def band_width(h: int, w: int, band: int) -> int:
    """Border band thickness clamped so that an interior remains: min(band, (min(h, w) - 1) // 2)."""
    return max(0, min(band, (min(h, w) - 1) // 2))


def _range(x: Tensor) -> Tensor:
    """max - min over the last two dims, keepdim."""
    return x.amax(dim=(-2, -1), keepdim=True) - x.amin(dim=(-2, -1), keepdim=True)


def minmax(x: Tensor, dims: tuple[int, ...] = (-2, -1)) -> Tensor:
    """Min-max normalise `x` to [0, 1] over `dims`; a constant slice (range < 1e-12) becomes 0.5 everywhere."""
    x = x.float()
    lo, hi = x.amin(dim=dims, keepdim=True), x.amax(dim=dims, keepdim=True)
    rng = hi - lo
    return torch.where(rng > _EPS, (x - lo) / rng.clamp_min(_EPS), torch.full_like(x, 0.5))


def border_mask(h: int, w: int, band: int = 2, device: torch.device | str | None = None) -> Tensor:
    """Bool [h, w] mask, True on the border band of thickness `band` (all four sides; no clamping here)."""
    i = torch.arange(h, device=device)[:, None]
    j = torch.arange(w, device=device)[None, :]
    return (i < band) | (i >= h - band) | (j < band) | (j >= w - band)


def _depth(layer_ids: Tensor | Sequence[int], n_layers: int, L: int, device: torch.device) -> Tensor:
    """Relative depth d = l / (n_layers - 1) per scored layer, float32 [L]; 0 when n_layers == 1."""
    ids = torch.as_tensor(layer_ids, device=device).float().reshape(-1)
    if ids.numel() != L:
        raise ValueError(f"layer_ids has {ids.numel()} entries but maps have L={L}")
    return ids / (n_layers - 1) if n_layers > 1 else torch.zeros_like(ids)


def _boundary(a: Tensor) -> Tensor:
    """S_b: band of thickness b = min(2, (min(H,W)-1)//2) on all four sides vs interior (1 when b == 0).

    r = mean(border) / mean(interior); S_b = 1 if r <= 0.6 else max(0, 1 - 2(r - 0.6)). Both means < 1e-6
    gives 1; only the interior mean < 1e-6 gives r = inf, hence 0.
    """
    H, W = a.shape[-2:]
    b = band_width(H, W, 2)
    if b == 0:
        return a.new_ones(a.shape[:-2])
    m = border_mask(H, W, b, a.device).to(a.dtype)
    mb = (a * m).sum((-2, -1)) / m.sum()
    mi = (a * (1 - m)).sum((-2, -1)) / (1 - m).sum()
    r = torch.where(mi < 1e-6, torch.full_like(mi, math.inf), mb / mi.clamp_min(1e-6))
    s = torch.where(r <= 0.6, torch.ones_like(r), (1 - 2 * (r - 0.6)).clamp_min(0.0))
    return torch.where((mb < 1e-6) & (mi < 1e-6), torch.ones_like(s), s)


def _spectral(a: Tensor, d: Tensor) -> Tensor:
    """S_spec = 1 - |share - ideal|: share of FFT power (min-max normalised map, shifted spectrum) at radius
    > 0.25 r_max from (H//2, W//2), r_max the distance to the farthest corner; ideal = 0.8(1-d) + 0.2d.
    Exactly 0.5 for a constant map."""
    H, W = a.shape[-2:]
    power = torch.fft.fftshift(torch.fft.fft2(minmax(a)), dim=(-2, -1)).abs().square()
    i = torch.arange(H, device=a.device, dtype=a.dtype)[:, None] - H // 2
    j = torch.arange(W, device=a.device, dtype=a.dtype)[None, :] - W // 2
    dist = torch.sqrt(i**2 + j**2)
    high = (dist > 0.25 * dist.max()).to(a.dtype)
    share = (power * high).sum((-2, -1)) / power.sum((-2, -1)).clamp_min(_EPS)
    s = 1 - (share - (0.8 * (1 - d) + 0.2 * d)).abs()
    return torch.where(_range(a)[..., 0, 0] < _EPS, torch.full_like(s, 0.5), s)


def _smooth(a: Tensor) -> Tensor:
    """S_smooth = 1 / (1 + mean |grad A|), 3x3 Sobel x and y with zero padding 1, on the raw map."""
    H, W = a.shape[-2:]
    kx = _SOBEL_X.to(a.device)
    k = torch.stack([kx, kx.T])[:, None]  # [2, 1, 3, 3]
    g = F.conv2d(a.reshape(-1, 1, H, W), k, padding=1)
    mag = g.square().sum(1).sqrt().mean((-2, -1))
    return 1 / (1 + mag.reshape(a.shape[:-2]))


def _focus(a: Tensor) -> Tensor:
    """S_focus = clamp(1 - H(A / sum A) / log(HW), 0, 1), natural log, 0 log 0 = 0.
    0 for a constant map (including all-zero) and when H*W == 1."""
    H, W = a.shape[-2:]
    total = a.sum((-2, -1), keepdim=True)
    p = a / total.clamp_min(_EPS)
    ent = -torch.xlogy(p, p).sum((-2, -1))
    s = (1 - ent / max(math.log(H * W), _EPS)).clamp(0.0, 1.0)
    bad = (_range(a)[..., 0, 0] < _EPS) | (total[..., 0, 0] <= 0)
    return torch.where(bad, torch.zeros_like(s), s)


def layer_scores(
    maps: Tensor, layer_ids: Tensor | Sequence[int], n_layers: int, *, check_finite: bool = True
) -> dict[str, Tensor]:
    """Score every layer map [..., L, H, W] on how anchor-like it looks (docs/method.md, layer scoring).

    `layer_ids` [L] are absolute decoder-layer indices, `n_layers` the model depth (d = l / (n_layers - 1),
    0 for a one-layer model). Returns float32 [..., L] tensors under "boundary", "spectral", "smooth",
    "focus", "position" (clamp(1 - 4(d - 20/31)^2, 0, 1)) and "combined" (COMBINED_WEIGHTS).
    Raises ValueError on NaN/inf input unless ``check_finite=False`` (which skips that host sync).
    """
    if maps.ndim < 3:
        raise ValueError(f"maps must be [..., L, H, W], got shape {tuple(maps.shape)}")
    a = maps.float()
    if check_finite:
        _check_finite(a, "maps")
    d = _depth(layer_ids, n_layers, a.shape[-3], a.device)
    scores = {
        "boundary": _boundary(a),
        "spectral": _spectral(a, d),
        "smooth": _smooth(a),
        "focus": _focus(a),
        "position": (1 - 4 * (d - D_STAR) ** 2).clamp(0.0, 1.0).expand(a.shape[:-2]).contiguous(),
    }
    scores["combined"] = combine(scores, COMBINED_WEIGHTS)
    return scores


def combine(scores: Mapping[str, Tensor], weights: Mapping[str, float] = COMBINED_WEIGHTS) -> Tensor:
    """Weighted sum of the named scores, [..., L] float32 (PAPER_WEIGHTS gives the paper's 3-score fusion)."""
    return sum(w * scores[k].float() for k, w in weights.items())


def fusion_weights(scores: Tensor, temperature: float = 0.1) -> Tensor:
    """Layer fusion weights [..., L]: min-max normalise over L (all equal: 1 where s > 0 else 0), then
    softmax(s_norm / temperature) over L."""
    s = scores.float()
    lo, hi = s.amin(-1, keepdim=True), s.amax(-1, keepdim=True)
    rng = hi - lo
    norm = torch.where(rng > _EPS, (s - lo) / rng.clamp_min(_EPS), (s > 0).float())
    return torch.softmax(norm / temperature, dim=-1)


def fuse(maps: Tensor, weights: Tensor) -> Tensor:
    """Weighted sum of layer maps: [..., L, H, W] x [..., L] -> [..., H, W] float32."""
    return (maps.float() * weights.float()[..., None, None]).sum(-3)


def _mean_filter(x: Tensor, k: int) -> Tensor:
    """k x k mean filter with replicate padding over the last two dims (k odd)."""
    if k < 1 or k % 2 == 0:
        raise ValueError(f"mean-filter kernel must be odd and positive, got {k}")
    H, W = x.shape[-2:]
    p = k // 2
    y = F.pad(x.reshape(-1, 1, H, W), (p, p, p, p), mode="replicate")
    return F.avg_pool2d(y, k, stride=1).reshape(x.shape)


def refine_map(fused: Tensor, enhance: float = 10.0, kernels: tuple[int, int] = (3, 5), border: int = 2,
               border_scale: float = 0.5, *, check_finite: bool = True) -> Tensor:
    """Steps of :func:`refine` up to (and including) the min-max before the percentile cut.

    min-max -> z-score (population std; 0 if std < 1e-12) * enhance -> sigmoid -> k1 x k1 mean filter
    (replicate) -> border band of b = min(border, (min(H,W)-1)//2) * border_scale -> k2 x k2 mean filter
    (replicate) -> min-max. A constant map (max - min < 1e-12) gives 0.5 everywhere: its z-score is 0,
    and the border band, which would otherwise imprint a centre bias on a map that carries no
    information, is skipped for it. Raises ValueError on NaN/inf input unless ``check_finite=False``
    (which skips that host sync).
    """
    x = fused.float()
    if check_finite:
        _check_finite(x, "fused")
    H, W = x.shape[-2:]
    const = _range(x) < _EPS
    x = minmax(x)
    mean = x.mean((-2, -1), keepdim=True)
    std = x.std((-2, -1), correction=0, keepdim=True)
    z = torch.where(std < _EPS, torch.zeros_like(x), (x - mean) / std.clamp_min(_EPS))
    x = _mean_filter(torch.sigmoid(z * enhance), kernels[0])
    b = band_width(H, W, border)
    if b > 0:
        x = torch.where(border_mask(H, W, b, x.device), x * border_scale, x)
    x = minmax(_mean_filter(x, kernels[1]))
    return torch.where(const, torch.full_like(x, 0.5), x)


def above_percentile(x: Tensor, percentile: float = 0.4) -> Tensor:
    """Bool [..., H, W]: values not below the ``percentile`` quantile (linear) of their map."""
    H, W = x.shape[-2:]
    q = torch.quantile(x.reshape(*x.shape[:-2], H * W), percentile, dim=-1, keepdim=True)
    return x >= q[..., None]


def refine(fused: Tensor, enhance: float = 10.0, kernels: tuple[int, int] = (3, 5), border: int = 2,
           border_scale: float = 0.5, percentile: float = 0.4, *, check_finite: bool = True) -> Tensor:
    """Turn a fused map [..., H, W] into anchor weights in [0, 1] (docs/method.md, refinement), float32, same shape:
    :func:`refine_map`, then values strictly below the ``percentile`` quantile set to 0, then min-max.
    A constant map refines to 0.5 everywhere."""
    x = refine_map(fused, enhance, kernels, border, border_scale, check_finite=check_finite)
    return minmax(torch.where(above_percentile(x, percentile), x, torch.zeros_like(x)))
