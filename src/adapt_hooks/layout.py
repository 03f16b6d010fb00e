"""Where a prompt's image tokens lie: what adapters produce and the anchor, monitor and methods read.

A :class:`Grid` is one 2-D grid of image tokens, a :class:`GridSpec` how an adapter describes one
grid among a row's image tokens, and an :class:`ImageLayout` the image keys of a prefilled batch:
their positions in the KV cache and the grids they form.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from functools import cached_property

import torch


@dataclass(frozen=True)
class Grid:
    """One 2-D grid of image tokens: ``height x width`` tokens, row-major, starting at ``offset``
    in the row's flat list of image keys."""

    offset: int
    height: int
    width: int

    @property
    def size(self) -> int:
        return self.height * self.width


@dataclass(frozen=True)
class GridSpec:
    """How an adapter describes one grid: ``height x width`` tokens, row-major, taken in order
    from the row's image tokens. ``row_stride`` > ``width`` skips tokens after each grid row
    (e.g. an image-newline token that carries the image id), ``leading`` skips tokens before the
    grid and ``trailing`` after it (begin/end slots); skipped tokens are not image keys."""

    height: int
    width: int
    row_stride: int | None = None
    trailing: int = 0
    leading: int = 0

    @property
    def span(self) -> int:
        """Image tokens this grid consumes, skipped ones included."""
        return self.leading + self.height * (self.row_stride or self.width) + self.trailing

    def token_index(self) -> torch.Tensor:
        """Indices, relative to the grid's first token (skipped ones included), of its
        ``height * width`` grid tokens."""
        stride = self.row_stride or self.width
        return self.leading + (torch.arange(self.height)[:, None] * stride + torch.arange(self.width)).flatten()


@dataclass(frozen=True)
class ImageLayout:
    """Where the image keys of one prefilled batch lie in the KV cache, and on which grids.

    ``positions[b, n]`` is the cache index of row ``b``'s n-th image key (left padding included);
    entries where ``valid`` is False are padding of the tensor, not image keys.
    ``grids[b]`` lists that row's grids over its flat image keys ``0 .. n_b - 1``.
    """

    positions: torch.Tensor  # [B, N] long
    valid: torch.Tensor  # [B, N] bool
    grids: tuple[tuple[Grid, ...], ...]
    prefill_length: int

    @property
    def batch_size(self) -> int:
        return self.positions.shape[0]

    @property
    def has_image(self) -> torch.Tensor:
        """[B] bool: rows with at least one image key."""
        return self.valid.any(-1)

    @property
    def any_image(self) -> bool:
        return any(len(g) > 0 for g in self.grids)

    @property
    def grid_shapes(self) -> tuple[tuple[tuple[int, int], ...], ...]:
        """Per row, the ``(height, width)`` of each grid."""
        return tuple(tuple((g.height, g.width) for g in row) for row in self.grids)

    @cached_property
    def shape_groups(self) -> dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]]:
        """Grids grouped by shape for batched per-grid maths: ``(h, w) -> (rows [G], keys [G, h*w])``,
        ``keys`` indexing the flat image keys of each grid's row. Built once, on the layout's device."""
        members: dict[tuple[int, int], list[tuple[int, int]]] = defaultdict(list)
        for b, grids in enumerate(self.grids):
            for g in grids:
                members[(g.height, g.width)].append((b, g.offset))
        device = self.positions.device
        groups = {}
        for (h, w), found in members.items():
            rows = torch.tensor([b for b, _ in found], device=device)
            offsets = torch.tensor([o for _, o in found], device=device)
            groups[(h, w)] = (rows, offsets[:, None] + torch.arange(h * w, device=device))
        return groups

    @cached_property
    def grids_per_row(self) -> torch.Tensor:
        """``[B]`` float: number of grids of each row (at least 1, to divide by)."""
        counts = [max(len(g), 1) for g in self.grids]
        return torch.tensor(counts, device=self.positions.device, dtype=torch.float32)

    @staticmethod
    def single_grid(batch: int, height: int, width: int, device: torch.device | None = None) -> ImageLayout:
        """A layout of ``batch`` rows of one ``height x width`` grid each, keys ``0 .. h*w - 1``."""
        n = height * width
        positions = torch.arange(n, device=device).expand(batch, n)
        valid = torch.ones(batch, n, dtype=torch.bool, device=device)
        return ImageLayout(positions, valid, ((Grid(0, height, width),),) * batch, n)
