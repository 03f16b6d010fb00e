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
from .validation import check_number

SIGNALS = ("amc", "visual_mass", "hhi", "change_rate", "steered")
NORMALIZE = ("anchor", None)


@dataclass
class _SlotState:
    """Per-prompt constants and counters of one hooked layer once it is monitored."""

    terms: torch.Tensor  # [B, N, 2]: anchor weights (over the anchor-phase AMC) and ones
    steered: torch.Tensor  # [B, 1] int32: monitored steps steered so far


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
        self._observe = decode.compiled_observe() if self.compile else decode.observe
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
    ) -> AttentionStep:
        """Observe one (step, layer) from the new query and the keys; ``anchor`` is the prompt's
        built anchor from the first monitored step on, ``None`` during the anchor phase;
        ``perturb`` is the corruption the layer's kernel applies to its logits (a stress test)."""
        state = None if anchor is None else self._slot(slot, anchor, query.device)
        logits, probs, total, mass, normalised, score, hhi = self._observe(
            query, key, attention_mask, scaling, softcap, positions, valid, None if state is None else state.terms, perturb
        )
        step = AttentionStep(slot, layer, logits, probs, positions, valid, total, None if state is None else score)
        step.observation = (normalised, score, mass / (probs.shape[1] * probs.shape[2]), hhi)
        return step

    def record(self, step: AttentionStep) -> None:
        """Count the step's steered rows and append its row of :attr:`history`."""
        state = self._slots.get(step.slot)
        normalised, score, mass, hhi = step.observation
        steered = step.steered if step.steered is not None else torch.zeros_like(mass, dtype=torch.bool)
        if state is not None and step.score is not None:
            state.steered.add_(steered)
            self._monitored_calls += 1
        if self.keep_history:
            self._rows.append(decode.history_row(normalised, self._previous.get(step.slot), score, mass, hhi, steered))
            self._previous[step.slot] = normalised

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
        self._previous = {slot: gather(t) for slot, t in self._previous.items()}
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
    def intervention_rate(self) -> float:
        """Fraction of monitored (step, layer, row-with-image) cells that were steered."""
        if not self._monitored_calls or self.layout is None:
            return 0.0
        steered = sum(int(s.steered.sum()) for s in self._slots.values())
        rows = int(self._has_image.sum())
        return steered / (self._monitored_calls * max(rows, 1))


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
