"""Anchor: the visual anchor built from the first K decode steps (docs/method.md).

Record the head-mean image attention of each hooked layer, score and fuse the layer maps on each
image grid, damp spatial bias, and refine the fused map into weights ``w`` in [0, 1] that the
drift monitor and the steering use.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from . import persistence, scoring
from .layout import Grid, ImageLayout
from .debias import DebiasMask
from .validation import check_count, check_number

FUSION = {"authors": scoring.COMBINED_WEIGHTS, "paper": scoring.PAPER_WEIGHTS}
KIND = "anchor"


class Anchor:
    """Builds the refined visual anchor of each row from its first ``k`` decode steps.

    The object is both the configuration (pass it to :func:`adapt_hooks.guard`) and, after a
    guarded generation, the result: :attr:`weights`, :attr:`fused`, :attr:`maps`,
    :attr:`layer_weights`. Each new prompt (prefill) starts a new recording, unless the anchor is
    *preset* (:meth:`from_weights`, :meth:`load`): then it is used as is from the first decode step.

    ``fusion`` picks the layer-score weights: ``"authors"`` (five scores, default) or ``"paper"``
    (spectral, smoothness, focus: 0.4/0.3/0.3). ``debias`` is a :class:`DebiasMask` for this
    model's image layout.
    """

    def __init__(
        self, k: int = 5, *, fusion: str = "authors", temperature: float = 0.1, debias: DebiasMask | None = None
    ) -> None:
        k = check_count("Anchor(k=...) (decode steps)", k)
        if fusion not in FUSION:
            raise ValueError(f"Anchor(fusion=...) must be one of {tuple(FUSION)}, got {fusion!r}.")
        if debias is not None and not isinstance(debias, DebiasMask):
            raise TypeError(f"Anchor(debias=...) must be an adapt_hooks.DebiasMask, got {type(debias).__name__}.")
        self.k = k
        self.fusion = fusion
        self.temperature = check_number("Anchor(temperature=...)", temperature, positive=True)
        self.debias = debias
        self.preset = False
        self._clear()
        self.layout: ImageLayout | None = None
        self.layer_ids: list[int] = []
        self.n_layers = 0

    def __repr__(self) -> str:
        extra = ", preset" if self.preset else ""
        return f"Anchor(k={self.k}, fusion={self.fusion!r}, temperature={self.temperature}, debias={self.debias!r}{extra})"

    def _clear(self) -> None:
        self._sums: dict[int, torch.Tensor] = {}
        self._steps = 0
        self._weights: torch.Tensor | None = None
        self._fused: torch.Tensor | None = None
        self._maps: torch.Tensor | None = None
        self._layer_weights: torch.Tensor | None = None

    # -- building from outside a guard ----------------------------------------------------------
    @classmethod
    def from_layer_maps(
        cls, maps: torch.Tensor, layer_ids: Sequence[int], n_layers: int, **options
    ) -> Anchor:
        """The anchor of per-layer attention maps captured elsewhere: ``[L, H, W]`` or
        ``[B, L, H, W]``, ``layer_ids`` the maps' decoder-layer indices in a model of ``n_layers``.

        Runs the same scoring, fusion, debias and refinement as a guarded generation; ``options``
        are the constructor's (``fusion``, ``temperature``, ``debias``). Non-finite maps raise.
        """
        if maps.ndim == 3:
            maps = maps[None]
        if maps.ndim != 4:
            raise ValueError(f"maps must be [L, H, W] or [B, L, H, W], got shape {tuple(maps.shape)}.")
        batch, n_maps, height, width = maps.shape
        if len(layer_ids) != n_maps:
            raise ValueError(f"{len(layer_ids)} layer_ids for {n_maps} maps.")
        scoring.layer_scores(maps, layer_ids, n_layers)  # validates: finite, shapes
        anchor = cls(**options)
        anchor.layout = ImageLayout.single_grid(batch, height, width, maps.device)
        anchor.layer_ids, anchor.n_layers = list(layer_ids), n_layers
        anchor._build(maps.float().flatten(2))
        return anchor

    @classmethod
    def from_weights(
        cls,
        weights: torch.Tensor,
        grids: Sequence[Sequence[tuple[int, int]]] | None = None,
        *,
        maps: torch.Tensor | None = None,
        k: int = 5,
    ) -> Anchor:
        """A preset anchor: refined weights ``[B, N]`` (or one ``[H, W]`` grid, or ``[B, H, W]``)
        given to :func:`adapt_hooks.guard`, which then skips recording and monitors from the
        first decode step. ``grids`` lists each row's grid shapes (default: one grid from the
        tensor's shape); ``maps`` ``[B, layers, N]`` are the anchor-phase layer maps that the
        default ``DriftMonitor(normalize="anchor")`` needs.

        A one-row anchor applies to every row of a batch whose rows have its grid shapes.
        """
        if weights.ndim == 2 and grids is None:
            weights = weights[None]
        if weights.ndim == 3:
            grids = grids or [[tuple(weights.shape[1:])]] * weights.shape[0]
            weights = weights.flatten(1)
        if weights.ndim != 2 or grids is None or len(grids) != weights.shape[0]:
            raise ValueError("from_weights() needs weights [B, N] with one list of grid shapes per row, or [H, W] / [B, H, W].")
        rows = []
        for b, shapes in enumerate(grids):
            offset, row = 0, []
            for h, w in shapes:
                row.append(Grid(offset, int(h), int(w)))
                offset += int(h) * int(w)
            if offset > weights.shape[1]:
                raise ValueError(f"Row {b}'s grids {list(shapes)} hold {offset} tokens; the weights have {weights.shape[1]}.")
            rows.append(tuple(row))
        n = weights.shape[1]
        valid = torch.tensor([[i < sum(g.size for g in row) for i in range(n)] for row in rows])
        anchor = cls(k)
        anchor.preset = True
        anchor.layout = ImageLayout(torch.arange(n).expand(len(rows), n), valid, tuple(rows), n)
        anchor._weights = weights.float() * valid.to(weights.device)
        anchor._maps = None if maps is None else maps.float()
        anchor._preset_state = (anchor.layout, anchor._weights, anchor._maps)
        return anchor

    # -- recording (called by the guard) ------------------------------------------------------
    def begin(self, layout: ImageLayout | None, layer_ids: list[int], n_layers: int) -> None:
        """Start a new prompt: forget the last one, or check that a preset anchor fits it."""
        if self.preset:
            # each prompt starts from the preset as given (the last prompt may have reordered it)
            self.layout, self._weights, self._maps = self._preset_state
            if layout is not None:
                self._fit(layout)
            return
        self.layout = layout
        self.layer_ids = list(layer_ids)
        self.n_layers = n_layers
        self._clear()

    def _fit(self, layout: ImageLayout) -> None:
        """Align a preset anchor with a prompt's layout (one row broadcasts to all rows)."""
        mine, theirs = self.layout.grid_shapes, layout.grid_shapes
        if len(mine) == 1 and len(theirs) > 1:
            mine = mine * len(theirs)
        if mine != theirs:
            raise ValueError(
                f"The preset anchor's grids {list(self.layout.grid_shapes)} do not match this prompt's image grids "
                f"{list(theirs)}: an anchor can only be re-used for prompts with the same image layout."
            )
        batch, n = len(theirs), layout.positions.shape[1]
        if self._weights.shape[0] != batch or self._weights.shape[1] != n:
            pad = n - self._weights.shape[1]
            self._weights = torch.nn.functional.pad(self._weights, (0, pad)).expand(batch, n).contiguous()
            if self._maps is not None:
                self._maps = torch.nn.functional.pad(self._maps, (0, pad)).expand(batch, -1, n).contiguous()
        self.layout = layout

    def record(self, slot: int, attention: torch.Tensor, last_layer: bool) -> None:
        """Add one step's head-mean image attention ``[B, N]`` of hooked layer ``slot``; a step
        counts as recorded once its last hooked layer was seen."""
        total = self._sums.get(slot)
        if total is None:
            self._sums[slot] = attention.clone()
        else:
            total.add_(attention)
        self._steps += last_layer

    def reorder(self, index: torch.Tensor) -> None:
        """Follow a reordering of the cache rows (beam search): row ``b`` continues the hypothesis
        of row ``index[b]``, so the recorded sums (while recording) and the built anchor follow it.
        ``index`` is a device tensor: no host sync. The layout is not reordered: beams are
        reordered among the rows of one prompt, which share its layout."""
        def gather(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.index_select(0, index.to(t.device))

        self._sums = {slot: gather(t) for slot, t in self._sums.items()}
        self._weights, self._maps = gather(self._weights), gather(self._maps)
        if not self.preset:  # a preset's fused map and layer weights are the file's, not per row
            self._fused, self._layer_weights = gather(self._fused), gather(self._layer_weights)

    @property
    def recording_steps(self) -> int:
        """Decode steps recorded before monitoring starts: ``k``, or 0 for a preset anchor."""
        return 0 if self.preset else self.k

    @property
    def ready(self) -> bool:
        """True once the anchor of the current prompt exists (or can be built)."""
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
        """The fused (and debiased) layer map before refinement, ``[batch, n_image_tokens]``."""
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

    def layer_map(self, slot: int, device: torch.device | None = None) -> torch.Tensor:
        """Hooked layer ``slot``'s anchor-phase map ``[B, N]`` (on ``device``); a clear error for
        an anchor without maps (a preset one built from weights alone)."""
        if self.maps is None:
            raise ValueError(
                "This anchor has no layer maps: use DriftMonitor(normalize=None, steering='logprior') with it, "
                "or build it with maps (Anchor.from_weights(..., maps=...))."
            )
        return self.maps[:, slot].to(device)

    def layer_mass(self, slot: int, device: torch.device | None = None) -> torch.Tensor:
        """``[B, 1]``: hooked layer ``slot``'s mean image attention mass over the anchor phase
        (floored, to divide by)."""
        return self.layer_map(slot, device).sum(-1, keepdim=True).clamp_min(1e-12)

    def grid(self, row: int = 0, index: int = 0, values: torch.Tensor | None = None) -> torch.Tensor:
        """``values`` (default: :attr:`weights`) of one image grid of one row as a 2-D ``[H, W]`` tensor."""
        values = self.weights if values is None else values
        if values is None or self.layout is None:
            raise RuntimeError("No anchor yet: run a guarded generation of more than k tokens first.")
        g = self.layout.grids[row][index]
        return values[row, g.offset : g.offset + g.size].reshape(g.height, g.width)

    def to_image(self, image, row: int = 0, index: int | None = 0, box=None, background: str = "white"):
        """The anchor-enhanced (VE) image ``I ⊙ m + white ⊙ (1 − m)`` of a PIL ``image`` (as VAG-DPO's chosen image).

        ``m`` is grid ``index`` of ``row`` placed on ``box`` (default: the whole image); with
        ``index=None``, every grid of the row, each on its own box of the list ``box`` (e.g. the
        tiles of a tiled image; where boxes overlap the larger weight wins). ``background``
        replaces the white: ``"mean"`` (the image's mean colour) or ``"blur"`` (a blurred copy).
        """
        from .viz.visual import enhance

        return enhance(image, *self._placed(row, index, box), background=background)

    def heatmap(self, image, row: int = 0, index: int | None = 0, box=None, opacity: float = 0.6):
        """``image`` with the anchor overlaid as a heat map, translucent where the anchor is low
        (``opacity`` where it is 1; PIL image); grids and boxes as in :meth:`to_image`."""
        from .viz.visual import heatmap

        return heatmap(image, *self._placed(row, index, box), opacity=opacity)

    def _placed(self, row: int, index: int | None, box) -> tuple[list[torch.Tensor], list]:
        if index is not None:
            return [self.grid(row, index)], [box]
        grids = [self.grid(row, i) for i in range(len(self.layout.grids[row]))]
        if box is None or len(box) != len(grids):
            raise ValueError(f"index=None places all {len(grids)} grids of row {row}: pass one box per grid.")
        return grids, list(box)

    # -- persistence ----------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write the anchor (weights, maps, fused map, fusion weights, grids) as safetensors."""
        if self.weights is None:
            raise RuntimeError("Nothing to save: this anchor has no weights yet.")
        grids = torch.tensor([[b, g.offset, g.height, g.width] for b, row in enumerate(self.layout.grids) for g in row])
        tensors = {
            "weights": self._weights, "maps": self._maps, "fused": self._fused,
            "layer_weights": self._layer_weights, "grids": grids.reshape(-1, 4),
        }
        meta = {"k": self.k, "fusion": self.fusion, "temperature": self.temperature,
                "layer_ids": self.layer_ids, "n_layers": self.n_layers}
        persistence.save(path, KIND, tensors, meta)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Anchor:
        """A preset anchor read from :meth:`save`'s file (see :meth:`from_weights`); a
        ``ValueError`` naming the file and what is wrong for anything but a valid anchor."""
        tensors, meta = persistence.load(path, KIND, ("weights", "grids"))
        try:
            return cls._from_file(tensors, meta)
        except (ValueError, TypeError) as error:
            raise ValueError(f"{os.fspath(path)!r} is not a valid adapt-hooks anchor: {str(error).rstrip('.')}.") from error

    @classmethod
    def _from_file(cls, tensors: dict[str, torch.Tensor], meta: dict) -> Anchor:
        """The anchor of a file's tensors and metadata, checked so that a corrupted file cannot
        reach the guard (non-finite or negative weights would turn into NaN steering)."""
        weights = persistence.check_tensor("weights", tensors["weights"], 2)
        if bool((weights < 0).any()):
            raise ValueError("weights has negative values")
        table = persistence.check_tensor("grids", tensors["grids"], 2, floating=False)
        batch, n = weights.shape
        if table.shape[1] != 4 or bool((table[:, 0] < 0).any() | (table[:, 0] >= batch).any()):
            raise ValueError(f"grids must be rows of (row < {batch}, offset, height, width), got {table.tolist()}")
        if bool((table[:, 2:] < 1).any()):
            raise ValueError(f"grids has a grid without tokens: {table.tolist()}")
        expected = {"maps": (3, (batch, None, n)), "fused": (2, (batch, n)), "layer_weights": (2, (batch, None))}
        for name, (ndim, shape) in expected.items():
            if name in tensors:
                found = persistence.check_tensor(name, tensors[name], ndim).shape
                if any(size is not None and size != got for size, got in zip(shape, found)):
                    raise ValueError(f"{name} has shape {tuple(found)}, which does not fit weights {tuple(weights.shape)}")
        table = table.tolist()
        grids = [[(h, w) for r, _, h, w in table if r == b] for b in range(batch)]
        anchor = cls.from_weights(weights, grids, maps=tensors.get("maps"), k=check_count("k", meta.get("k", 5)))
        anchor.fusion = meta.get("fusion", anchor.fusion)
        if anchor.fusion not in FUSION:
            raise ValueError(f"fusion {anchor.fusion!r} is not one of {tuple(FUSION)}")
        anchor.layer_ids, anchor.n_layers = [int(i) for i in meta.get("layer_ids", [])], int(meta.get("n_layers", 0))
        anchor._fused, anchor._layer_weights = tensors.get("fused"), tensors.get("layer_weights")
        return anchor

    # -- the maths ------------------------------------------------------------------------------
    def _finalize(self) -> None:
        """Build the anchor from the recorded sums once they cover ``k`` steps; runs on the device
        without host sync (non-finite attention is zeroed, not checked)."""
        if self._weights is not None or not self.ready:
            return
        device = self._sums[0].device
        sums = [self._sums[s].to(device) for s in range(len(self.layer_ids))]
        maps = torch.nan_to_num(torch.stack(sums, dim=1) / self._steps, nan=0.0, posinf=0.0)  # [B, L, N]
        self._sums.clear()
        self._build(maps)

    def _build(self, maps: torch.Tensor) -> None:
        """Score, fuse, debias and refine ``maps`` ``[B, L, N]`` grid by grid (batched per shape)."""
        batch, n_layers, n_tokens = maps.shape
        fused = maps.new_zeros(batch, n_tokens)
        weights = maps.new_zeros(batch, n_tokens)
        layer_weights = maps.new_zeros(batch, n_layers)
        for (h, w), (rows, cols) in self.layout.shape_groups.items():
            rows, cols = rows.to(maps.device), cols.to(maps.device)
            # advanced indices around a slice put the layer axis last: [G, h*w, L]
            grid_maps = maps[rows[:, None], :, cols].transpose(1, 2).reshape(len(rows), n_layers, h, w)
            scores = scoring.layer_scores(grid_maps, self.layer_ids, self.n_layers, check_finite=False)
            lw = scoring.fusion_weights(scoring.combine(scores, FUSION[self.fusion]), self.temperature)
            grid_fused = scoring.fuse(grid_maps, lw)
            if self.debias is not None:
                grid_fused = self.debias.apply(grid_fused, (h, w))
            fused[rows[:, None], cols] = grid_fused.flatten(1)
            weights[rows[:, None], cols] = scoring.refine(grid_fused, check_finite=False).flatten(1)
            layer_weights.index_add_(0, rows, lw)
        self._maps, self._fused, self._weights = maps, fused, weights
        self._layer_weights = layer_weights / self.layout.grids_per_row.to(maps.device)[:, None]
