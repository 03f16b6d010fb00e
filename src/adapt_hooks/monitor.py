"""DriftMonitor: per-step drift signals, the AMC gate, and when to steer (spec sections 0, 2, 3)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from . import decode, scoring, signals, steering
from .layout import ImageLayout
from .anchor import Anchor
from .validation import check_number

SIGNALS = ("amc", "visual_mass", "hhi", "change_rate", "steered")
NORMALIZE = ("anchor", None)


@dataclass
class _SlotState:
    """Per-prompt constants and counters of one hooked layer while it is monitored."""

    terms: torch.Tensor  # [B, N, 2]: anchor weights (over the anchor-phase AMC) and ones
    threshold: torch.Tensor  # [B, 1]: tau where the row may be steered, -inf elsewhere
    steered: torch.Tensor  # [B, 1] int32: steps steered so far


class DriftMonitor:
    """Scores every decode step's image attention against the anchor and steers when it drifts.

    From step ``k + 1`` on, per hooked layer and row, the AMC score (divided by the anchor-phase
    score of that layer when ``normalize="anchor"``) is compared with ``tau``; where it is lower
    and ``steer`` is on, the attention is steered (``steering``: "logprior" adds
    ``alpha · log(w + eps)`` to the image-key logits; "blend" and "redistribute" edit the image
    probabilities). All of it runs on the device; :attr:`history` keeps the signals of every step
    unless ``history=False``. ``compile=True`` runs the per-step maths through ``torch.compile``
    (worth it on GPU; the first prompt pays the compilation).

    While the model is in training mode (``model.train()``) the monitor only observes, so that a
    guard left around a training loop never changes what is learnt; ``steer_in_training=True``
    steers there too. The mode is read at each prompt's prefill.
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
        self._drift_step = decode.compiled_drift_step() if self.compile else decode.drift_step
        self._reset(None, 0)

    def __repr__(self) -> str:
        return (
            f"DriftMonitor(tau={self.tau}, alpha={self.alpha}, steer={self.steer}, normalize={self.normalize!r}, "
            f"steering={self.steering!r}" + (", compile=True" if self.compile else "")
            + (", steer_in_training=True)" if self.steer_in_training else ")")
        )

    # -- per prompt / per step (called by the guard) ------------------------------------------
    def _reset(self, layout: ImageLayout | None, n_layers: int, training: bool = False) -> None:
        """Start a new prompt of ``layout``; ``training`` is the model's mode at its prefill, which
        turns steering off for this prompt unless ``steer_in_training``."""
        self.layout = layout
        self.n_layers = n_layers
        self._steering_now = self.steer and (self.steer_in_training or not training)
        self._has_image = None if layout is None else layout.has_image
        self._slots: dict[int, _SlotState] = {}
        self._previous: dict[int, torch.Tensor] = {}
        self._per_slot: dict[tuple[str, int | torch.device], torch.Tensor] = {}
        self._boosts: dict[torch.device, torch.Tensor] = {}
        self._monitored_calls = 0
        self._rows: list[tuple[torch.Tensor, ...]] = []  # per (step, layer): [B, 1] score, mass, HHI, 2 TV, gate

    def _decode(
        self,
        slot: int,
        query: torch.Tensor,
        key: torch.Tensor,
        attention_mask: torch.Tensor | None,
        scaling: float,
        softcap: float | None,
        positions: torch.Tensor,
        valid: torch.Tensor | None,
        anchor: Anchor,
    ) -> torch.Tensor | None:
        """One monitored (step, layer) from the new query and the keys: signals, gate and, when
        steering, the probabilities ``[B, H_kv, G, kv]`` to attend with (``None``: leave the step to
        the model's kernel). The hot path: :func:`decode.drift_step`, with every per-prompt
        constant prepared at the layer's first monitored step."""
        if self._steering_now and self.steering != "logprior":
            probs = signals.attention_probs(query, key, attention_mask, scaling, softcap)
            edit = self._update(slot, signals.image_attention(probs, positions, valid), anchor, True)
            return edit(probs)
        state = self._slot(slot, anchor, query.device)
        boost = self._boost(anchor, query.device) if self._steering_now else None
        probs, normalised, row = self._drift_step(
            query, key, attention_mask, scaling, softcap, positions, valid,
            state.terms, state.threshold, state.steered, boost, self._previous.get(slot), self.keep_history,
        )  # fmt: skip
        self._monitored_calls += 1
        if self.keep_history:
            self._keep(slot, normalised, row)
        return probs

    def _update(self, slot: int, attention: torch.Tensor, anchor: Anchor, monitoring: bool) -> Callable | None:
        """Signals of one (step, layer) from its head-mean image attention ``[B, N]``, in eager
        steps: the anchor phase (history only) and the probability-editing steering modes, for
        which it returns the edit to apply to the post-softmax probabilities."""
        edit = None
        if monitoring:
            state = self._slot(slot, anchor, attention.device)
            mass, normalised, score, hhi, gate = decode.gate_step(attention, state.terms, state.threshold, state.steered)
            self._monitored_calls += 1
            edit = self._edit(slot, gate[:, 0], attention, anchor)
        elif self.keep_history:  # anchor phase: no score, no gate
            mass = attention.sum(-1, keepdim=True)
            normalised = attention / mass.clamp_min(signals.TINY)
            score = torch.full_like(mass, float("nan"))
            hhi = signals.concentration(normalised).unsqueeze(-1)
            gate = torch.zeros_like(mass, dtype=torch.bool)
        if self.keep_history:
            self._keep(slot, normalised, decode.history_row(normalised, self._previous.get(slot), score, mass, hhi, gate))
        return edit

    def _slot(self, slot: int, anchor: Anchor, device: torch.device) -> _SlotState:
        """The per-prompt constants and counters of one hooked layer, built at its first monitored step."""
        state = self._slots.get(slot)
        if state is None:
            weights = anchor.weights.to(device)
            if self.normalize == "anchor":
                weights = weights / self._anchor_value(slot, "amc", anchor, weights)[:, None]
            eligible = self._has_image.to(device) & self._steering_now
            state = self._slots[slot] = _SlotState(
                terms=torch.stack((weights, torch.ones_like(weights)), dim=-1),
                threshold=torch.full(eligible.shape, self.tau, device=device).masked_fill(~eligible, float("-inf"))[:, None],
                steered=torch.zeros(eligible.shape, dtype=torch.int32, device=device)[:, None],
            )
        return state

    def _keep(self, slot: int, normalised: torch.Tensor, row: tuple[torch.Tensor, ...]) -> None:
        """Append this (step, layer)'s row of :attr:`history` (on the device until read) and keep
        its normalised attention for the next step's change rate."""
        self._previous[slot] = normalised
        self._rows.append(row)

    def _reorder(self, index: torch.Tensor) -> None:
        """Follow a reordering of the cache rows (beam search): row ``b`` continues the hypothesis
        of row ``index[b]``, so every per-row state of the current prompt is gathered with
        ``index`` (a device tensor: no host sync). The ``steered`` counters and the recorded
        history are not: they count (step, layer, row) cells that were already steered or seen."""
        def gather(t: torch.Tensor) -> torch.Tensor:
            return t.index_select(0, index.to(t.device))

        for state in self._slots.values():
            state.terms, state.threshold = gather(state.terms), gather(state.threshold)
        self._previous = {slot: gather(t) for slot, t in self._previous.items()}
        self._per_slot = {key: gather(t) for key, t in self._per_slot.items()}
        self._boosts = {device: gather(t) for device, t in self._boosts.items()}

    def _state_tensors(self) -> list[torch.Tensor]:
        """Every tensor the monitor keeps across steps besides :attr:`history` (for memory checks)."""
        slots = [t for s in self._slots.values() for t in (s.terms, s.threshold, s.steered)]
        return [*slots, *self._previous.values(), *self._per_slot.values(), *self._boosts.values()]

    def _boost(self, anchor: Anchor, device: torch.device) -> torch.Tensor:
        """``exp(α · log(w + ε)) − 1`` at the prompt's image keys, ``[B, P]`` on ``device``: the
        multiplicative form of the log-prior bias that :func:`decode.drift_step` applies (built once)."""
        boost = self._boosts.get(device)
        if boost is None:
            prior = steering.logprior(anchor.weights.to(device), self.layout, self.alpha, self.eps)
            boost = self._boosts[device] = torch.expm1(prior)
        return boost

    def _edit(self, slot: int, gate: torch.Tensor, attention: torch.Tensor, anchor: Anchor) -> Callable:
        """The post-softmax edit of "blend" or "redistribute" for this (step, layer)."""
        layout = self.layout
        positions, valid = layout.positions.to(attention.device), layout.valid.to(attention.device)
        weights = anchor.weights.to(attention.device)
        if self.steering == "blend":
            border = self._border_weights(attention.device)
            hhi = signals.concentration(signals.normalise(attention * border))
            gain = steering.blend_gain(hhi, self._anchor_value(slot, "hhi", anchor, weights)) * gate
            target = self._anchor_value(slot, "target", anchor, weights)
            return lambda probs: steering.blend(probs, positions, valid, target, gain)
        keep = self._keep_mask(attention) | ~gate[:, None]
        return lambda probs: steering.redistribute(probs, positions, valid, keep)

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
        """``[B, N]``: 0.5 on each grid's border band (2 tokens, clamped on small grids), else 1
        (built once per device: the hooked layers of a split model live on several)."""
        value = self._per_slot.get(("border", device))
        if value is None:
            value = torch.ones(self.layout.positions.shape, device=device)
            for (h, w), (rows, cols) in self.layout.shape_groups.items():
                band = scoring.border_mask(h, w, scoring.band_width(h, w, 2), device).flatten()
                value[rows.to(device)[:, None], cols.to(device)] = torch.where(band, 0.5, 1.0)
            self._per_slot[("border", device)] = value
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


def _stack_on_cpu(tensors: list[torch.Tensor]) -> torch.Tensor:
    """``torch.stack(tensors).cpu()`` for tensors on several devices (a model split with
    ``device_map`` keeps each layer's rows on its own device): one stack and copy per device."""
    by_device: dict[torch.device, list[int]] = {}
    for i, t in enumerate(tensors):
        by_device.setdefault(t.device, []).append(i)
    out = torch.empty((len(tensors), *tensors[0].shape), dtype=tensors[0].dtype)
    for indices in by_device.values():
        out[indices] = torch.stack([tensors[i] for i in indices]).cpu()
    return out


def steering_modes() -> tuple[str, ...]:
    """The values ``DriftMonitor(steering=...)`` accepts."""
    return steering.MODES
