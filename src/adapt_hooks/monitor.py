"""DriftMonitor: per-step drift signals, the AMC gate, and when to steer (spec sections 0, 2, 3)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from . import scoring, signals, steering
from .adapters import ImageLayout
from .anchor import Anchor
from .validation import check_number

SIGNALS = ("amc", "visual_mass", "hhi", "change_rate", "steered")
NORMALIZE = ("anchor", None)


@dataclass(frozen=True)
class Steer:
    """What the interceptor must do to this (step, layer): add a key ``bias`` ``[B, P]`` to the
    attention logits ("logprior"), or ``edit`` the post-softmax probabilities ("blend",
    "redistribute"). Rows whose gate is closed are left unchanged by either."""

    bias: torch.Tensor | None = None
    edit: Callable[[torch.Tensor], torch.Tensor] | None = None


class DriftMonitor:
    """Scores every decode step's image attention against the anchor and steers when it drifts.

    From step ``k + 1`` on, per hooked layer and row, the AMC score (divided by the anchor-phase
    score of that layer when ``normalize="anchor"``) is compared with ``tau``; where it is lower
    and ``steer`` is on, the attention is steered (``steering``: "logprior" adds
    ``alpha · log(w + eps)`` to the image-key logits; "blend" and "redistribute" edit the image
    probabilities). All of it runs on the device; :attr:`history` keeps the signals of every step
    unless ``history=False``.
    """

    def __init__(
        self,
        tau: float = 0.6,
        alpha: float = 0.5,
        *,
        steer: bool = True,
        normalize: str | None = "anchor",
        eps: float = 1e-6,
        history: bool = True,
        steering: str = "logprior",
    ) -> None:
        self.tau = check_number("DriftMonitor(tau=...)", tau)
        self.alpha = check_number("DriftMonitor(alpha=...)", alpha)
        self.eps = check_number("DriftMonitor(eps=...)", eps, positive=True)
        if normalize not in NORMALIZE:
            raise ValueError(f"DriftMonitor(normalize=...) must be one of {NORMALIZE}, got {normalize!r}.")
        if steering not in steering_modes():
            raise ValueError(f"DriftMonitor(steering=...) must be one of {steering_modes()}, got {steering!r}.")
        self.steer = bool(steer)
        self.normalize = normalize
        self.keep_history = bool(history)
        self.steering = steering
        self._reset(None, 0)

    def __repr__(self) -> str:
        return (
            f"DriftMonitor(tau={self.tau}, alpha={self.alpha}, steer={self.steer}, normalize={self.normalize!r}, "
            f"steering={self.steering!r})"
        )

    # -- per prompt / per step (called by the guard) ------------------------------------------
    def _reset(self, layout: ImageLayout | None, n_layers: int) -> None:
        self.layout = layout
        self.n_layers = n_layers
        self._has_image = None if layout is None else layout.has_image
        self._previous: dict[int, torch.Tensor] = {}
        self._per_slot: dict[tuple[str, int], torch.Tensor] = {}
        self._prior: dict[torch.device, torch.Tensor] = {}
        self._steered: dict[int, torch.Tensor] = {}
        self._monitored_calls = 0
        self._rows: list[torch.Tensor] = []

    def _update(self, slot: int, attention: torch.Tensor, anchor: Anchor, monitoring: bool) -> Steer | None:
        """Signals of one (step, layer) from its head-mean image attention ``[B, N]``; while
        ``monitoring`` (the anchor is ready) also the gate, and, when steering is on, the
        :class:`Steer` to apply (``None`` otherwise)."""
        normalised = signals.normalise(attention)
        change = signals.change_rate(normalised, self._previous.get(slot, normalised))
        self._previous[slot] = normalised
        action = None
        if monitoring:
            weights = anchor.weights.to(attention.device)
            score = signals.amc_normalised(normalised, weights)
            if self.normalize == "anchor":
                score = score / self._anchor_value(slot, "amc", anchor, weights)
            gate = (score < self.tau) & self._has_image.to(attention.device) & self.steer
            if self.steer:
                action = self._steer(slot, gate, attention, anchor, weights)
            steered = self._steered.get(slot)
            self._steered[slot] = gate.to(torch.int32) if steered is None else steered + gate
            self._monitored_calls += 1
        else:
            score = torch.full_like(change, float("nan"))
            gate = torch.zeros_like(change, dtype=torch.bool)
        if self.keep_history:
            row = (score, attention.sum(-1), signals.concentration(normalised), change, gate.float())
            self._rows.append(torch.stack(row))
        return action

    def _steer(self, slot: int, gate: torch.Tensor, attention: torch.Tensor, anchor: Anchor, weights: torch.Tensor) -> Steer:
        layout = self.layout
        positions, valid = layout.positions.to(attention.device), layout.valid.to(attention.device)
        if self.steering == "logprior":
            prior = self._prior.get(weights.device)
            if prior is None:
                prior = self._prior[weights.device] = steering.logprior(weights, layout, self.alpha, self.eps)
            return Steer(bias=prior * gate[:, None])
        if self.steering == "blend":
            border = self._border_weights(attention.device)
            hhi = signals.concentration(signals.normalise(attention * border))
            gain = steering.blend_gain(hhi, self._anchor_value(slot, "hhi", anchor, weights)) * gate
            target = self._anchor_value(slot, "target", anchor, weights)
            return Steer(edit=lambda probs: steering.blend(probs, positions, valid, target, gain))
        keep = self._keep_mask(attention) | ~gate[:, None]
        return Steer(edit=lambda probs: steering.redistribute(probs, positions, valid, keep))

    def _anchor_value(self, slot: int, name: str, anchor: Anchor, weights: torch.Tensor) -> torch.Tensor:
        """Per-layer quantities of the anchor phase, computed once per prompt: its AMC (the
        normaliser of ``normalize="anchor"``), its border-damped HHI and its normalised map."""
        value = self._per_slot.get((name, slot))
        if value is None:
            if anchor.maps is None:
                raise ValueError(
                    "This anchor has no layer maps: use DriftMonitor(normalize=None, steering='logprior') with it, "
                    "or build it with maps (Anchor.from_weights(..., maps=...))."
                )
            maps = anchor.maps[:, slot].to(weights.device)
            if name == "amc":
                value = signals.amc(maps, weights).clamp_min(1e-12)
            elif name == "hhi":
                value = signals.concentration(signals.normalise(maps * self._border_weights(weights.device)))
            else:
                value = signals.normalise(maps)
            self._per_slot[(name, slot)] = value
        return value

    def _border_weights(self, device: torch.device) -> torch.Tensor:
        """``[B, N]``: 0.5 on each grid's border band (2 tokens, clamped on small grids), else 1."""
        value = self._per_slot.get(("border", -1))
        if value is None:
            value = torch.ones(self.layout.positions.shape, device=device)
            for (h, w), (rows, cols) in self.layout.shape_groups.items():
                band = scoring.border_mask(h, w, scoring.band_width(h, w, 2), device).flatten()
                value[rows.to(device)[:, None], cols.to(device)] = torch.where(band, 0.5, 1.0)
            self._per_slot[("border", -1)] = value
        return value

    def _keep_mask(self, attention: torch.Tensor) -> torch.Tensor:
        """``[B, N]`` bool: image keys at or above the 40th percentile of the refined current map."""
        keep = torch.ones_like(attention, dtype=torch.bool)
        for (h, w), (rows, cols) in self.layout.shape_groups.items():
            rows, cols = rows.to(attention.device)[:, None], cols.to(attention.device)
            grids = attention[rows, cols].reshape(-1, h, w)
            refined = scoring.refine_map(grids, check_finite=False)
            keep[rows, cols] = scoring.above_percentile(refined).flatten(1)
        return keep

    # -- results ------------------------------------------------------------------------------
    @property
    def history(self) -> dict[str, torch.Tensor]:
        """Signals of every decode step, each ``[steps, layers, batch]`` float32 on the CPU.

        ``amc`` is the (normalised) score and is NaN during the anchor phase (steps 1..k);
        ``steered`` is 1.0 where the attention was steered. Empty when ``history=False``.
        """
        if not self._rows or not self.n_layers:
            return {}
        steps = len(self._rows) // self.n_layers
        rows = torch.stack([r.cpu() for r in self._rows[: steps * self.n_layers]])
        rows = rows.view(steps, self.n_layers, len(SIGNALS), -1)
        return {name: rows[:, :, i] for i, name in enumerate(SIGNALS)}

    @property
    def intervention_rate(self) -> float:
        """Fraction of monitored (step, layer, row-with-image) cells that were steered."""
        if not self._monitored_calls or self.layout is None:
            return 0.0
        steered = sum(int(s.sum()) for s in self._steered.values())
        rows = int(self._has_image.sum())
        return steered / (self._monitored_calls * max(rows, 1))


def steering_modes() -> tuple[str, ...]:
    """The values ``DriftMonitor(steering=...)`` accepts."""
    return steering.MODES
