"""ADAPT's steering (ADAPT-METHOD section 3): where a hooked layer's anchor-modulated score fell
below ``tau`` (the monitor computes it), pull that row's image attention back toward the anchor.

Three ways, one unit each: ``"logprior"`` (default) adds ``α · log(w + ε)`` to every head's
pre-softmax logits of the image keys, applied as the equivalent renormalised product of the
probabilities; ``"blend"`` and ``"redistribute"`` edit the post-softmax image probabilities.
``ADAPT(steering=...)`` builds the unit of a mode. Everything is gated per row on the device.

The gate reads the paper's anchor-modulated score by default (``gate="amc"``); ``gate="mass"``
reads the layer's visual mass relative to its anchor phase instead (steer where the image gets
less than ``tau`` of the attention it got while the anchor was recorded), the attention signal
that best separates hallucinated from correct mentions on the evidence benchmark; ``gate="risk"``
switches steering on for the rows whose hallucination risk at the previous step (the monitor's
risk model) is above ``tau``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from .. import scoring, signals
from ..layout import ImageLayout
from ..validation import check_number
from .base import AttentionStep, Method, Prompt


#: What the gate compares with ``tau``: the monitor's AMC score, the visual mass over the anchor
#: phase's (both: steer below ``tau``), or the previous step's hallucination risk (steer above it).
GATES = ("amc", "mass", "risk")


class ADAPT(Method):
    """ADAPT's anchor-gated attention steering; ``ADAPT(tau, alpha, steering="blend")`` is the
    :class:`Blend` unit, and so on (every unit is an ``ADAPT``).

    Acts from the first decode step after the anchor phase, on every layer the guard hooks, on the
    rows whose score is below ``tau``: ``run.monitor``'s AMC (anchor-normalised by default), or
    with ``gate="mass"`` the step's image attention mass over the layer's anchor-phase mass; with
    ``gate="risk"``, the rows whose risk at the previous step is above ``tau``.
    """

    name = "adapt"
    mode = ""
    needs_anchor = True
    edits_attention = True

    def __new__(cls, tau: float = 0.6, alpha: float = 0.5, *, steering: str = "logprior", eps: float = 1e-6, gate: str = "amc"):
        if cls is ADAPT:
            if steering not in _UNITS:
                raise ValueError(f"ADAPT(steering=...) must be one of {steering_modes()}, got {steering!r}.")
            cls = _UNITS[steering]
        return super().__new__(cls)

    def __init__(
        self, tau: float = 0.6, alpha: float = 0.5, *, steering: str = "logprior", eps: float = 1e-6, gate: str = "amc"
    ) -> None:
        self.tau = check_number("ADAPT(tau=...)", tau)
        self.alpha = check_number("ADAPT(alpha=...)", alpha)
        self.eps = check_number("ADAPT(eps=...)", eps, positive=True)
        if gate not in GATES:
            raise ValueError(f"ADAPT(gate=...) must be one of {GATES}, got {gate!r}.")
        self.gate = gate
        if gate == "mass":  # it reads each layer's anchor-phase map
            self.needs_anchor_maps = True
        if gate == "risk":
            self.needs_risk = True
        self.start(None)

    def settings(self) -> Mapping[str, object]:
        return {"tau": self.tau, "alpha": self.alpha, "steering": self.mode, "eps": self.eps, "gate": self.gate}

    def __repr__(self) -> str:
        gate = "" if self.gate == "amc" else f", gate={self.gate!r}"
        return f"ADAPT(tau={self.tau}, alpha={self.alpha}, steering={self.mode!r}, eps={self.eps}{gate})"

    def start(self, prompt: Prompt | None) -> None:
        self.prompt = prompt
        self._cache: dict[tuple[str, object], torch.Tensor] = {}  # per-prompt constants, by (name, device or slot)

    def attend(self, step: AttentionStep) -> None:
        if step.score is None:  # anchor phase
            return
        if self.gate == "risk":
            if step.risk is None:  # no risk yet (the first decode step)
                return
            gate = (step.risk > self.tau) & self._per_device("has_image", step.risk.device)
        else:
            if self.gate == "amc":
                score = step.score
            else:
                score = step.attention.sum(-1, keepdim=True) / self._anchor_mass(step.slot, step.score.device)
            gate = score < self._per_device("threshold", step.score.device)
        step.mark(gate)
        self.steer(step, gate)

    def steer(self, step: AttentionStep, gate: torch.Tensor) -> None:
        """Edit ``step`` on the rows where ``gate`` ``[B, 1]`` is True."""
        raise NotImplementedError

    def _anchor_mass(self, slot: int, device: torch.device) -> torch.Tensor:
        """``[B, 1]``: hooked layer ``slot``'s mean image attention mass over the anchor phase."""
        value = self._cache.get(("mass", slot))
        if value is None:
            value = self._cache[("mass", slot)] = self.prompt.anchor.layer_mass(slot, device)
        return value

    def _per_device(self, name: str, device: torch.device) -> torch.Tensor:
        """A per-prompt constant on ``device``, built once (a model split with ``device_map``
        keeps its hooked layers on several devices)."""
        value = self._cache.get((name, device))
        if value is None:
            value = self._cache[(name, device)] = self._build(name, device)
        return value

    def _build(self, name: str, device: torch.device) -> torch.Tensor:
        layout = self.prompt.layout
        if name == "threshold":  # tau on rows with an image, -inf (never steered) elsewhere
            return torch.full((layout.batch_size, 1), self.tau, device=device).masked_fill(
                ~layout.has_image.to(device)[:, None], float("-inf")
            )
        if name == "valid":
            return layout.valid.to(device)
        if name == "has_image":
            return layout.has_image.to(device)[:, None]
        raise KeyError(name)

    def reorder(self, index: torch.Tensor) -> None:
        self._cache = {key: t.index_select(0, index.to(t.device)) for key, t in self._cache.items()}

    def state_tensors(self) -> list[torch.Tensor]:
        return list(self._cache.values())


class LogPrior(ADAPT):
    """``softmax(l + α · log(w + ε))`` on the image keys of gated rows, as ``p · (w + ε)^α``
    renormalised (the monitor's probabilities are reused: the keys are read once)."""

    mode = "logprior"

    def steer(self, step: AttentionStep, gate: torch.Tensor) -> None:
        boost = self._per_device("boost", gate.device)  # (w + ε)^α − 1 at the image keys, 0 elsewhere
        step.scale_prefill((boost * gate).add_(1).view(boost.shape[0], 1, 1, -1))

    def _build(self, name: str, device: torch.device) -> torch.Tensor:
        if name == "boost":
            return torch.expm1(logprior(self.prompt.anchor.weights.to(device), self.prompt.layout, self.alpha, self.eps))
        return super()._build(name, device)


class Blend(ADAPT):
    """Move each head's image-key distribution toward the anchor-phase map, by a gain that grows as
    the border-damped concentration falls below the anchor phase's (:func:`blend`)."""

    mode = "blend"
    needs_anchor_maps = True

    def steer(self, step: AttentionStep, gate: torch.Tensor) -> None:
        border = self._per_device("border", gate.device)
        hhi = signals.concentration(signals.normalise(step.attention * border))
        gain = blend_gain(hhi, self._per_slot("hhi", step.slot, gate.device)) * gate[:, 0]
        target = self._per_slot("target", step.slot, gate.device)
        step.set_probs(blend(step.probs, step.positions, self._per_device("valid", gate.device), target, gain))

    def _per_slot(self, name: str, slot: int, device: torch.device) -> torch.Tensor:
        """The anchor phase's border-damped HHI ``[B]`` or normalised map ``[B, N]`` of one layer."""
        value = self._cache.get((name, slot))
        if value is None:
            maps = self.prompt.anchor.layer_map(slot, device)
            if name == "hhi":
                value = signals.concentration(signals.normalise(maps * self._per_device("border", device)))
            else:
                value = signals.normalise(maps)
            self._cache[(name, slot)] = value
        return value

    def _build(self, name: str, device: torch.device) -> torch.Tensor:
        if name == "border":
            return border_weights(self.prompt.layout, device)
        return super()._build(name, device)


class Redistribute(ADAPT):
    """Zero the image keys below the 40th percentile of the refined current map and give their
    mass back to the kept image keys, per head (:func:`redistribute`)."""

    mode = "redistribute"

    def steer(self, step: AttentionStep, gate: torch.Tensor) -> None:
        keep = keep_mask(step.attention, self.prompt.layout) | ~gate
        step.set_probs(redistribute(step.probs, step.positions, self._per_device("valid", gate.device), keep))


_UNITS: dict[str, type[ADAPT]] = {unit.mode: unit for unit in (LogPrior, Blend, Redistribute)}


def steering_modes() -> tuple[str, ...]:
    """The values ``ADAPT(steering=...)`` and ``DriftMonitor(steering=...)`` accept."""
    return tuple(_UNITS)


# -- the maths ------------------------------------------------------------------------------------
def logprior(weights: torch.Tensor, layout: ImageLayout, alpha: float, eps: float) -> torch.Tensor:
    """``α · log(w + ε)`` placed at each row's image-key positions of the prefill, ``[B, P]`` float32.

    Computed in float32: ``ε = 1e-6`` would underflow in fp16/bf16.
    """
    values = alpha * torch.log(weights.float() + eps) * layout.valid.to(weights.device)
    out = torch.zeros(layout.batch_size, layout.prefill_length, device=weights.device)
    return out.scatter_add_(1, layout.positions.to(weights.device), values)


def blend_gain(hhi: torch.Tensor, hhi_anchor: torch.Tensor) -> torch.Tensor:
    """``g = clamp(0.4 · clamp(1 − HHI_t / HHI_anchor, 0, 1), 0, 1)``: how much to blend."""
    return (0.4 * (1 - hhi / hhi_anchor.clamp_min(1e-30)).clamp(0, 1)).clamp(0, 1)


def _edit_image_keys(probs: torch.Tensor, positions: torch.Tensor, valid: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """``probs`` ``[B, H_kv, G, kv]`` with its image-key entries replaced by ``new`` ``[B, H_kv, G, N]``."""
    index = positions[:, None, None, :].expand_as(new)
    delta = (new - probs.gather(-1, index)) * valid[:, None, None, :]
    return probs.scatter_add(-1, index, delta)  # padding slots add 0, so duplicates are harmless


def _image_probs(probs: torch.Tensor, positions: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    return probs.gather(-1, positions[:, None, None, :].expand(*probs.shape[:-1], -1)) * valid[:, None, None, :]


def blend(
    probs: torch.Tensor, positions: torch.Tensor, valid: torch.Tensor, target: torch.Tensor, gain: torch.Tensor
) -> torch.Tensor:
    """Per head, move the image-key distribution toward ``target`` (``[B, N]``, sums to 1 per row):
    ``a ← m · ((1 − g) â + g · target)``, keeping each head's image mass ``m`` (so rows still sum
    to 1); ``gain`` ``[B]`` is 0 on rows that are not steered."""
    image = _image_probs(probs, positions, valid)
    mass = image.sum(-1, keepdim=True)
    g = gain[:, None, None, None]
    new = (1 - g) * image + g * mass * target[:, None, None, :]
    return _edit_image_keys(probs, positions, valid, new)


def redistribute(probs: torch.Tensor, positions: torch.Tensor, valid: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Per head, zero the image keys outside ``keep`` (``[B, N]`` bool; all True on rows that are not
    steered) and give their mass back to the kept image keys in proportion; clamp to [0, 1]."""
    image = _image_probs(probs, positions, valid)
    kept = image * keep[:, None, None, :]
    removed = (image - kept).sum(-1, keepdim=True)
    total = kept.sum(-1, keepdim=True)
    new = torch.where(total > 0, kept + removed * kept / total.clamp_min(1e-30), image).clamp(0, 1)
    return _edit_image_keys(probs, positions, valid, new)


def border_weights(layout: ImageLayout, device: torch.device) -> torch.Tensor:
    """``[B, N]``: 0.5 on each grid's border band (2 tokens, clamped on small grids), else 1."""
    value = torch.ones(layout.positions.shape, device=device)
    for (h, w), (rows, cols) in layout.shape_groups.items():
        band = scoring.border_mask(h, w, scoring.band_width(h, w, 2), device).flatten()
        value[rows.to(device)[:, None], cols.to(device)] = torch.where(band, 0.5, 1.0)
    return value


def keep_mask(attention: torch.Tensor, layout: ImageLayout) -> torch.Tensor:
    """``[B, N]`` bool: image keys at or above the 40th percentile of the refined current map."""
    keep = torch.ones_like(attention, dtype=torch.bool)
    for (h, w), (rows, cols) in layout.shape_groups.items():
        rows, cols = rows.to(attention.device)[:, None], cols.to(attention.device)
        grids = attention[rows, cols].reshape(-1, h, w)
        refined = scoring.refine_map(grids, check_finite=False)
        keep[rows, cols] = scoring.above_percentile(refined).flatten(1)
    return keep
