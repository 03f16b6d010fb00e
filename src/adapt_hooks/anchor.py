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
        self._grid_index: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
        if layout is not None:
            # Grids of the same shape are scored together: index tensors per distinct shape, built
            # now (prefill) so that the decode-time finalisation needs no host-to-device copy.
            members: dict[tuple[int, int], list[tuple[int, int]]] = defaultdict(list)
            for b, grids in enumerate(layout.grids):
                for g in grids:
                    members[(g.height, g.width)].append((b, g.offset))
            device = layout.positions.device
            for (h, w), found in members.items():
                rows = torch.tensor([b for b, _ in found], device=device)
                offsets = torch.tensor([o for _, o in found], device=device)
                self._grid_index[(h, w)] = (rows, offsets[:, None] + torch.arange(h * w, device=device))
            counts = [max(len(g), 1) for g in layout.grids]
            self._grids_per_row = torch.tensor(counts, device=device, dtype=torch.float32)

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
        """Score, fuse and refine the recorded maps; runs once, on the device, without host sync
        (index tensors were prepared at prefill, non-finite attention is zeroed, not checked)."""
        if self._weights is not None or not self.ready:
            return
        device = self._sums[0].device
        sums = [self._sums[s].to(device) for s in range(len(self.layer_ids))]
        maps = torch.nan_to_num(torch.stack(sums, dim=1) / self._steps, nan=0.0, posinf=0.0)  # [B, L, N]
        batch, n_layers, n_tokens = maps.shape
        fused = maps.new_zeros(batch, n_tokens)
        weights = maps.new_zeros(batch, n_tokens)
        layer_weights = maps.new_zeros(batch, n_layers)
        for (h, w), (rows, cols) in self._grid_index.items():
            rows, cols = rows.to(device), cols.to(device)
            # advanced indices around a slice put the layer axis last: [G, h*w, L]
            grid_maps = maps[rows[:, None], :, cols].transpose(1, 2).reshape(len(rows), n_layers, h, w)
            scores = scoring.layer_scores(grid_maps, self.layer_ids, self.n_layers, check_finite=False)
            lw = scoring.fusion_weights(scores["combined"], self.temperature)
            grid_fused = scoring.fuse(grid_maps, lw)
            fused[rows[:, None], cols] = grid_fused.flatten(1)
            weights[rows[:, None], cols] = scoring.refine(grid_fused, check_finite=False).flatten(1)
            layer_weights.index_add_(0, rows, lw)
        self._maps, self._fused, self._weights = maps, fused, weights
        self._layer_weights = layer_weights / self._grids_per_row.to(device)[:, None]
        self._sums.clear()
