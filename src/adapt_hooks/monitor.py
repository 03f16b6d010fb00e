"""DriftMonitor: per-step drift signals, the AMC gate, and when to steer (spec sections 0, 2, 3)."""

from __future__ import annotations

import torch

from . import signals, steering
from .adapters import ImageLayout
from .anchor import Anchor
from .validation import check_number

SIGNALS = ("amc", "visual_mass", "hhi", "change_rate", "steered")
NORMALIZE = ("anchor", None)
STEERING = ("logprior",)


class DriftMonitor:
    """Scores every decode step's image attention against the anchor and steers when it drifts.

    From step ``k + 1`` on, per hooked layer and row, the AMC score (divided by the anchor-phase
    score of that layer when ``normalize="anchor"``) is compared with ``tau``; where it is lower
    and ``steer`` is on, ``alpha · log(w + eps)`` is added to the image-key logits. All of it runs
    on the device; :attr:`history` keeps the signals of every step unless ``history=False``.
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
        if steering not in STEERING:
            raise ValueError(f"DriftMonitor(steering=...) must be one of {STEERING}, got {steering!r}.")
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
        self._reference: dict[int, torch.Tensor] = {}
        self._prior: dict[torch.device, torch.Tensor] = {}
        self._steered: dict[int, torch.Tensor] = {}
        self._monitored_calls = 0
        self._rows: list[torch.Tensor] = []

    def _update(self, slot: int, attention: torch.Tensor, anchor: Anchor, monitoring: bool) -> torch.Tensor | None:
        """Signals of one (step, layer) from ``attention`` ``[B, N]``; while ``monitoring`` (the
        anchor is ready) also the gate, and the steering key bias ``[B, P]`` it returns when
        steering is on (``None`` otherwise)."""
        normalised = signals.normalise(attention)
        change = signals.change_rate(normalised, self._previous.get(slot, normalised))
        self._previous[slot] = normalised
        bias = None
        if monitoring:
            weights = anchor.weights.to(attention.device)
            score = signals.amc_normalised(normalised, weights)
            if self.normalize == "anchor":
                score = score / self._anchor_score(slot, anchor, weights)
            gate = (score < self.tau) & self._has_image.to(attention.device) & self.steer
            if self.steer:
                bias = self._logprior(weights) * gate[:, None]
            steered = self._steered.get(slot)
            self._steered[slot] = gate.to(torch.int32) if steered is None else steered + gate
            self._monitored_calls += 1
        else:
            score = torch.full_like(change, float("nan"))
            gate = torch.zeros_like(change, dtype=torch.bool)
        if self.keep_history:
            row = (score, attention.sum(-1), signals.concentration(normalised), change, gate.float())
            self._rows.append(torch.stack(row))
        return bias

    def _anchor_score(self, slot: int, anchor: Anchor, weights: torch.Tensor) -> torch.Tensor:
        """AMC of the anchor-phase mean attention of this layer: the normaliser of ``normalize="anchor"``."""
        ref = self._reference.get(slot)
        if ref is None:
            ref = signals.amc(anchor.maps[:, slot].to(weights.device), weights).clamp_min(1e-12)
            self._reference[slot] = ref
        return ref

    def _logprior(self, weights: torch.Tensor) -> torch.Tensor:
        prior = self._prior.get(weights.device)
        if prior is None:
            prior = steering.logprior(weights, self.layout, self.alpha, self.eps)
            self._prior[weights.device] = prior
        return prior

    # -- results ------------------------------------------------------------------------------
    @property
    def history(self) -> dict[str, torch.Tensor]:
        """Signals of every decode step, each ``[steps, layers, batch]`` float32 on the CPU.

        ``amc`` is the (normalised) score and is NaN during the anchor phase (steps 1..k);
        ``steered`` is 1.0 where the logits were steered. Empty when ``history=False``.
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
