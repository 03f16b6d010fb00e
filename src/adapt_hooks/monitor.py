"""DriftMonitor: per-step drift signals of every hooked layer, the anchor-modulated score the ADAPT
gate reads, and the history of a guarded run (ADAPT-METHOD sections 0 and 2)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from . import decode, signals
from .anchor import Anchor
from .layout import ImageLayout
from .methods.adapt import ADAPT, steering_modes
from .methods.base import AttentionStep, Method
from .risk import FEATURES, RiskModel
from .validation import check_number

SIGNALS = ("amc", "visual_mass", "hhi", "change_rate", "steered")
NORMALIZE = ("anchor", None)


@dataclass
class _SlotState:
    """Per-prompt constants and counters of one hooked layer once it is monitored."""

    terms: torch.Tensor  # [B, N, 2]: anchor weights (over the anchor-phase AMC) and ones
    steered: torch.Tensor  # [B, 1] int32: monitored steps steered so far
    anchor_mass: torch.Tensor | None = None  # [B, 1]: the layer's anchor-phase image mass (risk features)


class DriftMonitor:
    """Scores every decode step's image attention against the anchor and records the drift signals.

    During the anchor phase (the first ``k`` decode steps) it records the image attention of each
    hooked layer for the anchor; from step ``k + 1`` on it computes the Anchor-Modulated
    Concentration of each (layer, row), divided by that layer's anchor-phase score when
    ``normalize="anchor"``, which the ADAPT gate compares with ``tau``. :attr:`history` keeps the
    signals of every step unless ``history=False``; ``compile=True`` runs the per-step maths
    through ``torch.compile`` (worth it on GPU; the first prompt pays the compilation).

    ``tau``, ``alpha``, ``steer``, ``steering`` and ``eps`` configure the ADAPT steering that
    ``guard(model, monitor=...)`` runs when it is given no ``methods=`` (``steer=False``: observe
    only); with ``methods=``, the monitor observes alongside them and these settings are unused.
    While the model is in training mode the guard only observes, so that a guard left around a
    training loop never changes what is learnt; ``steer_in_training=True`` lets the methods act
    there too. The mode is read at each prompt's prefill.

    With a ``risk`` model (:class:`adapt_hooks.RiskModel`), every decode step also gets a
    hallucination risk per row, on the device (:attr:`risk`, :attr:`latest_risk`).
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
        compile: bool = False,
        steer_in_training: bool = False,
        risk: RiskModel | None = None,
    ) -> None:
        self.tau = check_number("DriftMonitor(tau=...)", tau)
        self.alpha = check_number("DriftMonitor(alpha=...)", alpha)
        self.eps = check_number("DriftMonitor(eps=...)", eps, positive=True)
        if normalize not in NORMALIZE:
            raise ValueError(f"DriftMonitor(normalize=...) must be one of {NORMALIZE}, got {normalize!r}.")
        if steering not in steering_modes():
            raise ValueError(f"DriftMonitor(steering=...) must be one of {steering_modes()}, got {steering!r}.")
        self.steer = bool(steer)
        self.steer_in_training = bool(steer_in_training)
        self.normalize = normalize
        self.keep_history = bool(history)
        self.steering = steering
        self.compile = bool(compile)
        self._observe, self._observe_probs = decode.compiled_observe() if self.compile else (decode.observe, decode.observe_probs)
        if risk is not None and not isinstance(risk, RiskModel):
            raise TypeError(f"DriftMonitor(risk=...) must be an adapt_hooks.RiskModel, got {type(risk).__name__}.")
        self.risk_model = risk
        self.begin(None, 0)

    def __repr__(self) -> str:
        return (
            f"DriftMonitor(tau={self.tau}, alpha={self.alpha}, steer={self.steer}, normalize={self.normalize!r}, "
            f"steering={self.steering!r}" + (", compile=True" if self.compile else "")
            + (", steer_in_training=True)" if self.steer_in_training else ")")
        )

    def default_methods(self) -> list[Method]:
        """What ``guard(model, monitor=self)`` runs without ``methods=``: ADAPT steering with this
        monitor's ``tau``, ``alpha``, ``steering`` and ``eps``, or nothing when ``steer=False``."""
        return [ADAPT(self.tau, self.alpha, steering=self.steering, eps=self.eps)] if self.steer else []

    # -- per prompt / per step (called by the guard) ------------------------------------------
    def begin(self, layout: ImageLayout | None, n_layers: int) -> None:
        """Start a new prompt of ``layout`` observed on ``n_layers`` hooked layers."""
        self.layout = layout
        self.n_layers = n_layers
        self._has_image = None if layout is None else layout.has_image
        self._slots: dict[int, _SlotState] = {}
        self._previous: dict[int, torch.Tensor] = {}
        self._anchor_amc: dict[int, torch.Tensor] = {}
        self._monitored_calls = 0
        self._rows: list[tuple[torch.Tensor, ...]] = []  # per (step, layer): [B, 1] score, mass, HHI, 2 TV, steered
        self._pending: torch.Tensor | None = None  # [B, 5]: this step's attention features summed over layers
        self._features: list[torch.Tensor] = []  # per step: [B, F] risk features
        self._risks: list[torch.Tensor] = []  # per step: [B] risk
        self._last_risk: torch.Tensor | None = None  # [B]: the last step's risk, following beam reordering

    def observe(
        self,
        slot: int,
        layer: int,
        query: torch.Tensor,
        key: torch.Tensor,
        attention_mask: torch.Tensor | None,
        scaling: float,
        softcap: float | None,
        positions: torch.Tensor,
        valid: torch.Tensor | None,
        anchor: Anchor | None,
        perturb: Callable | None = None,
        probs: torch.Tensor | None = None,
    ) -> AttentionStep:
        """Observe one (step, layer) from the new query and the keys, or from ``probs`` ``[B, H,
        1, kv]`` when the layer's kernel returned them (then the step has no logits of its own);
        ``anchor`` is the prompt's built anchor from the first monitored step on, ``None`` during
        the anchor phase; ``perturb`` is the corruption the layer's kernel applies to its logits
        (a stress test; already in kernel ``probs``)."""
        state = None if anchor is None else self._slot(slot, anchor, query.device)
        terms = None if state is None else state.terms
        if probs is None:
            logits, probs, total, mass, normalised, score, hhi = self._observe(
                query, key, attention_mask, scaling, softcap, positions, valid, terms, perturb
            )
        else:
            logits = None
            probs, total, mass, normalised, score, hhi = self._observe_probs(probs, positions, valid, terms)
        step = AttentionStep(slot, layer, logits, probs, positions, valid, total, None if state is None else score)
        step.observation = (normalised, score, mass / (probs.shape[1] * probs.shape[2]), hhi)
        if self._last_risk is not None:
            step.risk = self._last_risk[:, None]
        return step

    def record(self, step: AttentionStep) -> None:
        """Count the step's steered rows and append its row of :attr:`history`."""
        state = self._slots.get(step.slot)
        normalised, score, mass, hhi = step.observation
        steered = step.steered if step.steered is not None else torch.zeros_like(mass, dtype=torch.bool)
        if state is not None and step.score is not None:
            state.steered.add_(steered)
            self._monitored_calls += 1
        if self.keep_history or self.risk_model is not None:
            row = decode.history_row(normalised, self._previous.get(step.slot), score, mass, hhi, steered)
            self._previous[step.slot] = normalised
            if self.keep_history:
                self._rows.append(row)
            if self.risk_model is not None:
                self._add_features(state, step.score, mass, hhi, row[3])

    def _add_features(self, state: _SlotState | None, score: torch.Tensor | None, mass: torch.Tensor, hhi: torch.Tensor,
                      change: torch.Tensor) -> None:  # fmt: skip
        """Add one layer's risk features to the step's sum; during the anchor phase the mass ratio
        and the AMC take their reference value 1."""
        ones = torch.ones_like(mass)
        ratio = ones if state is None or state.anchor_mass is None else mass / state.anchor_mass
        row = torch.cat([mass, ratio, ones if score is None else score, hhi, 0.5 * change], -1)
        self._pending = row if self._pending is None else self._pending + row

    def end_step(self, logits: torch.Tensor) -> None:
        """Close one decode step with its next-token ``logits`` ``[B, V]``: pool the layers'
        features, add the model's confidence (top probability) and compute the risk (on the device)."""
        if self.risk_model is None or self._pending is None:
            return
        confidence = torch.softmax(logits.float(), -1).amax(-1, keepdim=True)
        features = torch.cat([self._pending / max(self.n_layers, 1), confidence], -1)
        self._pending = None
        self._features.append(features)
        self._last_risk = self.risk_model(features)
        self._risks.append(self._last_risk)

    def _slot(self, slot: int, anchor: Anchor, device: torch.device) -> _SlotState:
        """The per-prompt constants and counters of one hooked layer, built at its first monitored step."""
        state = self._slots.get(slot)
        if state is None:
            weights = anchor.weights.to(device)
            if self.normalize == "anchor":
                weights = weights / self.anchor_score(slot, anchor, weights)[:, None]
            state = self._slots[slot] = _SlotState(
                terms=torch.stack((weights, torch.ones_like(weights)), dim=-1),
                steered=torch.zeros(weights.shape[0], 1, dtype=torch.int32, device=device),
            )
            if self.risk_model is not None and anchor.maps is not None:
                state.anchor_mass = anchor.layer_mass(slot, device)
        return state

    def anchor_score(self, slot: int, anchor: Anchor, weights: torch.Tensor) -> torch.Tensor:
        """``S_AMC(A_l ‖ w)`` ``[B]`` of hooked layer ``slot``'s anchor-phase map: the normaliser of
        ``normalize="anchor"`` (computed once per prompt)."""
        value = self._anchor_amc.get(slot)
        if value is None:
            maps = anchor.layer_map(slot, weights.device)
            value = self._anchor_amc[slot] = signals.amc(maps, weights).clamp_min(1e-12)
        return value

    def reorder(self, index: torch.Tensor) -> None:
        """Follow a reordering of the cache rows (beam search): row ``b`` continues the hypothesis
        of row ``index[b]``, so every per-row state of the current prompt is gathered with
        ``index`` (a device tensor: no host sync). The ``steered`` counters and the recorded
        history are not: they count (step, layer, row) cells that were already steered or seen."""
        def gather(t: torch.Tensor) -> torch.Tensor:
            return t.index_select(0, index.to(t.device))

        for state in self._slots.values():
            state.terms = gather(state.terms)
            if state.anchor_mass is not None:
                state.anchor_mass = gather(state.anchor_mass)
        self._previous = {slot: gather(t) for slot, t in self._previous.items()}
        if self._last_risk is not None:
            self._last_risk = gather(self._last_risk)
        self._anchor_amc = {slot: gather(t) for slot, t in self._anchor_amc.items()}

    def _state_tensors(self) -> list[torch.Tensor]:
        """Every tensor the monitor keeps across steps besides :attr:`history` (for memory checks)."""
        slots = [t for s in self._slots.values() for t in (s.terms, s.steered)]
        return [*slots, *self._previous.values(), *self._anchor_amc.values()]

    # -- results ------------------------------------------------------------------------------
    @property
    def history(self) -> dict[str, torch.Tensor]:
        """Signals of every decode step, each ``[steps, layers, batch]`` float32 on the CPU.

        ``amc`` is the (normalised) score and is NaN during the anchor phase (steps 1..k);
        ``steered`` is 1.0 where a method steered the attention. Empty when ``history=False``.
        """
        if not self._rows or not self.n_layers:
            return {}
        steps = len(self._rows) // self.n_layers
        rows = self._rows[: steps * self.n_layers]
        columns = [_stack_on_cpu([row[i] for row in rows]).float() for i in range(len(SIGNALS))]
        columns[SIGNALS.index("change_rate")] *= 0.5  # rows keep the L1 distance; TV is half of it
        return {name: column.view(steps, self.n_layers, -1) for name, column in zip(SIGNALS, columns)}

    @property
    def risk(self) -> torch.Tensor | None:
        """Hallucination risk ``[steps, batch]`` in [0, 1] on the CPU, row ``s`` for the token that
        decode step ``s + 1`` generates (aligned with :attr:`history`); ``None`` without a risk model."""
        return None if self.risk_model is None else _risk_rows(self._risks, 0)

    @property
    def latest_risk(self) -> torch.Tensor | None:
        """The last decode step's risk ``[batch]``, on the device (no host sync), or ``None``."""
        return self._last_risk

    @property
    def risk_features(self) -> torch.Tensor | None:
        """The features the risk read, ``[steps, batch, F]`` on the CPU (``adapt_hooks.risk.FEATURES``)."""
        return None if self.risk_model is None else _risk_rows(self._features, len(FEATURES))

    @property
    def intervention_rate(self) -> float:
        """Steered share of the monitored cells: decode steps after the anchor phase (whose steps are
        never steered and do not count) × hooked layers × rows with an image."""
        if not self._monitored_calls or self.layout is None:
            return 0.0
        steered = sum(int(s.steered.sum()) for s in self._slots.values())
        rows = int(self._has_image.sum())
        return steered / (self._monitored_calls * max(rows, 1))


def _risk_rows(rows: list[torch.Tensor], width: int) -> torch.Tensor:
    if not rows:
        return torch.zeros(0, 0, width) if width else torch.zeros(0, 0)
    return _stack_on_cpu(rows).float()


def _stack_on_cpu(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """``torch.stack(tensors).cpu()`` for tensors on several devices (a model split with
    ``device_map`` keeps each layer's rows on its own device): one stack and copy per device."""
    by_device: dict[torch.device, list[int]] = {}
    for i, t in enumerate(tensors):
        by_device.setdefault(t.device, []).append(i)
    out = torch.empty((len(tensors), *tensors[0].shape), dtype=tensors[0].dtype)
    for indices in by_device.values():
        out[indices] = torch.stack([tensors[i] for i in indices]).cpu()
    return out
