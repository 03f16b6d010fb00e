"""Pictures of an anchor: the anchor-enhanced (VE) image of VAG-DPO and a heat-map overlay.

The anchor grid is upsampled bicubically onto the image, or onto ``box`` (left, top, right,
bottom) when the model only saw a crop of it (e.g. a centre crop); outside the box the VE image is
its background. The method's background is white; ``"mean"`` (the image's mean colour) and
``"blur"`` (a blurred copy of the image) keep the VE image closer to the images a model was
trained on, for example on a dark canvas. Placement is approximate for processors that pad or tile: pass the box of the region the
grid covers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _mask(grids: list[torch.Tensor], size: tuple[int, int], boxes: list) -> torch.Tensor:
    """The grids, each upsampled onto its box, as one [H, W] mask in [0, 1] over an image of
    ``size`` = (width, height); 0 outside every box, the larger value where boxes overlap."""
    width, height = size
    mask = torch.zeros(height, width)
    for grid, box in zip(grids, boxes):
        left, top, right, bottom = box or (0, 0, width, height)
        inner = F.interpolate(grid.float().cpu()[None, None], size=(bottom - top, right - left), mode="bicubic", align_corners=False)
        region = mask[top:bottom, left:right]
        mask[top:bottom, left:right] = torch.maximum(region, inner[0, 0].clamp(0, 1))
    return mask


def _to_tensor(image) -> torch.Tensor:
    import numpy as np

    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32).copy())


def _to_image(pixels: torch.Tensor):
    from PIL import Image

    return Image.fromarray(pixels.round().clamp(0, 255).to(torch.uint8).numpy(), mode="RGB")


#: What the VE image shows where the anchor is low: white (the method's), the mean colour, a blur.
BACKGROUNDS = ("white", "mean", "blur")


def check_background(background: str) -> str:
    if background not in BACKGROUNDS:
        raise ValueError(f"background= must be one of {BACKGROUNDS}, got {background!r}.")
    return background


def _background(image, pixels: torch.Tensor, background: str) -> torch.Tensor:
    if background == "white":
        return torch.full_like(pixels, 255.0)
    if background == "mean":
        return pixels.mean((0, 1), keepdim=True).expand_as(pixels)
    from PIL import ImageFilter

    return _to_tensor(image.convert("RGB").filter(ImageFilter.GaussianBlur(radius=max(image.size) / 16)))


def enhance(image, grids: list[torch.Tensor], boxes: list, background: str = "white"):
    """``I ⊙ m + bg ⊙ (1 − m)`` with ``m`` the upsampled anchor grids and ``bg`` the
    ``background`` (see :data:`BACKGROUNDS`; PIL in, PIL out)."""
    pixels = _to_tensor(image)
    mask = _mask(grids, image.size, boxes)[..., None]
    return _to_image(pixels * mask + _background(image, pixels, check_background(background)) * (1 - mask))


def colormap(values: torch.Tensor) -> torch.Tensor:
    """[H, W] in [0, 1] -> [H, W, 3] RGB in [0, 255]: blue, cyan, yellow, red."""
    stops = torch.tensor([[0, 0, 255], [0, 255, 255], [255, 255, 0], [255, 0, 0]], dtype=torch.float32)
    position = values.clamp(0, 1) * (len(stops) - 1)
    low = position.floor().long().clamp(max=len(stops) - 2)
    frac = (position - low)[..., None]
    return stops[low] * (1 - frac) + stops[low + 1] * frac


def heatmap(image, grids: list[torch.Tensor], boxes: list, opacity: float = 0.6):
    """``image`` under the colour-mapped anchor grids, translucent in proportion to the anchor:
    ``opacity · m`` of the heat map where the anchor is ``m``, so the image stays visible where the
    anchor is low and shows through everywhere for ``opacity < 1``."""
    pixels = _to_tensor(image)
    mask = _mask(grids, image.size, boxes)
    alpha = opacity * mask[..., None]
    return _to_image(pixels * (1 - alpha) + colormap(mask) * alpha)
