"""Anchor: the visual anchor built from the first K decode steps (spec section 1).

Record the head-mean image attention of each hooked layer, score and fuse the layer maps on each
image grid, and refine the fused map into weights ``w`` in [0, 1] that the drift monitor and the
steering use.
"""

from __future__ import annotations

from collections import defaultdict

import torch

from . import scoring
from .adapters import ImageLayout
from .validation import check_number


class Anchor:
    """Builds the refined visual anchor of each row from its first ``k`` decode steps.

    The object is both the configuration (pass it to :func:`adapt_hooks.guard`) and, after a
    guarded generation, the result: :attr:`weights`, :attr:`fused`, :attr:`maps`,
    :attr:`layer_weights`. Each new prompt (prefill) starts a new recording.
    """

    def __init__(self, k: int = 5, *, temperature: float = 0.1) -> None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"Anchor(k=...) must be a positive integer number of decode steps, got {k!r}.")
        self.k = k
        self.temperature = check_number("Anchor(temperature=...)", temperature, positive=True)
        self._reset(None, [], 0)

    def __repr__(self) -> str:
        return f"Anchor(k={self.k}, temperature={self.temperature})"

    # -- recording (called by the guard) ------------------------------------------------------
    def _reset(self, layout: ImageLayout | None, layer_ids: list[int], n_layers: int) -> None:
        self.layout = layout
        self.layer_ids = list(layer_ids)
        self.n_layers = n_layers
        self._sums: dict[int, torch.Tensor] = {}
        self._steps = 0
        self._weights: torch.Tensor | None = None
        self._fused: torch.Tensor | None = None
        self._maps: torch.Tensor | None = None
        self._layer_weights: torch.Tensor | None = None

    def _record(self, slot: int, attention: torch.Tensor, last_layer: bool) -> None:
        """Add one step's head-mean image attention ``[B, N]`` of hooked layer ``slot``; a step
        counts as recorded once its last hooked layer was seen."""
        total = self._sums.get(slot)
        if total is None:
            self._sums[slot] = attention.clone()
        else:
            total.add_(attention)
        self._steps += last_layer

    @property
    def ready(self) -> bool:
        """True once the first ``k`` decode steps of the current prompt were recorded."""
        return self._weights is not None or self._steps >= self.k

    # -- results ------------------------------------------------------------------------------
    @property
    def weights(self) -> torch.Tensor | None:
        """Refined anchor ``w`` ``[batch, n_image_tokens]`` in [0, 1] (0 on padding of rows with
        fewer image tokens); ``None`` before ``k`` decode steps were seen."""
        self._finalize()
        return self._weights

    @property
    def fused(self) -> torch.Tensor | None:
        """The fused layer map before refinement, ``[batch, n_image_tokens]``."""
        self._finalize()
        return self._fused

    @property
    def maps(self) -> torch.Tensor | None:
        """Recorded per-layer maps ``A_l`` (mean over the first k steps), ``[batch, layers, n_image_tokens]``."""
        self._finalize()
        return self._maps

    @property
    def layer_weights(self) -> torch.Tensor | None:
        """Fusion weight of each hooked layer, ``[batch, layers]`` (mean over a row's grids)."""
        self._finalize()
        return self._layer_weights

    def grid(self, row: int = 0, index: int = 0, values: torch.Tensor | None = None) -> torch.Tensor:
        """``values`` (default: :attr:`weights`) of one image grid of one row as a 2-D ``[H, W]`` tensor."""
        values = self.weights if values is None else values
        if values is None or self.layout is None:
            raise RuntimeError("No anchor yet: run a guarded generation of more than k tokens first.")
        g = self.layout.grids[row][index]
        return values[row, g.offset : g.offset + g.size].reshape(g.height, g.width)

    def _finalize(self) -> None:
        if self._weights is not None or not self.ready:
            return
        device = self._sums[0].device
        maps = torch.stack([self._sums[s].to(device) for s in range(len(self.layer_ids))], dim=1) / self._steps
        batch, n_layers, n_tokens = maps.shape
        fused = torch.zeros(batch, n_tokens, device=maps.device)
        weights = torch.zeros_like(fused)
        layer_weights = torch.zeros(batch, n_layers, device=maps.device)
        # Grids of the same shape are scored together: one batched call per distinct shape.
        by_shape: dict[tuple[int, int], list[tuple[int, int]]] = defaultdict(list)
        for b, grids in enumerate(self.layout.grids):
            for g in grids:
                by_shape[(g.height, g.width)].append((b, g.offset))
        for (h, w), members in by_shape.items():
            rows = torch.tensor([b for b, _ in members], device=maps.device)
            cols = torch.tensor([o for _, o in members], device=maps.device)[:, None] + torch.arange(h * w, device=maps.device)
            grid_maps = maps[rows[:, None], :, cols].transpose(1, 2).reshape(len(members), n_layers, h, w)
            scores = scoring.layer_scores(grid_maps, self.layer_ids, self.n_layers)["combined"]
            lw = scoring.fusion_weights(scores, self.temperature)
            grid_fused = scoring.fuse(grid_maps, lw)
            fused[rows[:, None], cols] = grid_fused.reshape(len(members), -1)
            weights[rows[:, None], cols] = scoring.refine(grid_fused).reshape(len(members), -1)
            layer_weights.index_add_(0, rows, lw)
        n_grids = torch.tensor([max(len(g), 1) for g in self.layout.grids], device=maps.device)
        self._maps, self._fused, self._weights = maps, fused, weights
        self._layer_weights = layer_weights / n_grids[:, None]
        self._sums.clear()
