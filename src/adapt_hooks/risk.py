"""A per-token hallucination risk from attention dynamics and the model's own confidence.

At every decode step a guard whose monitor holds a :class:`RiskModel` pools the step's drift
signals over the hooked layers — the visual mass, the mass relative to the layer's anchor phase,
the (anchor-normalised) AMC, the HHI and the change rate — with the model's confidence in its
next token (the top softmax probability), and a logistic model turns them into a risk in [0, 1],
on the device. :func:`adapt_hooks.fit_risk` fits one for any supported model from captions whose
hallucinated tokens are known; it is saved as safetensors with the architecture it was fitted
for, and refused for another.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn
from transformers import StoppingCriteria

from . import persistence

KIND = "risk-model"
#: The features a risk model reads, in order (each pooled over the hooked layers).
FEATURES = ("visual_mass", "mass_ratio", "amc", "hhi", "change_rate", "confidence")


@dataclass
class RiskModel:
    """``risk = sigmoid(w · (x − mean) / std + b)`` over :data:`FEATURES`; ``model_type``,
    ``n_layers`` (decoder layers) and ``hidden_size`` (of the decoder) name the architecture it was
    fitted for (``None``: any)."""

    weights: torch.Tensor
    bias: float = 0.0
    mean: torch.Tensor | None = None
    std: torch.Tensor | None = None
    model_type: str | None = None
    n_layers: int | None = None
    meta: dict | None = None
    hidden_size: int | None = None

    def __post_init__(self) -> None:
        self.meta = {} if self.meta is None else dict(self.meta)
        self.weights = persistence.check_tensor("weights", torch.as_tensor(self.weights, dtype=torch.float32), 1)
        if self.weights.shape[0] != len(FEATURES):
            raise ValueError(f"RiskModel weights must have {len(FEATURES)} entries ({', '.join(FEATURES)}), got {self.weights.shape[0]}.")
        self.mean = torch.zeros_like(self.weights) if self.mean is None else torch.as_tensor(self.mean, dtype=torch.float32)
        self.std = torch.ones_like(self.weights) if self.std is None else torch.as_tensor(self.std, dtype=torch.float32).clamp_min(1e-6)
        self._on_device: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def untrained(cls) -> RiskModel:
        """All weights zero (risk 0.5 everywhere): records the features, for :func:`fit_risk`."""
        return cls(torch.zeros(len(FEATURES)))

    def logit(self, features: torch.Tensor) -> torch.Tensor:
        """``[..., F]`` features -> ``[...]`` logits, on the features' device."""
        scale, shift = self._constants(features.device)
        return features.float() @ scale + shift

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logit(features))

    def _constants(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``w / std`` and ``b − w · mean / std`` on ``device`` (built once per device)."""
        found = self._on_device.get(device)
        if found is None:
            scale = self.weights / self.std
            found = self._on_device[device] = (scale.to(device), (self.bias - scale @ self.mean).to(device))
        return found

    def check(self, model: nn.Module) -> None:
        """Refuse ``model`` if this risk model was fitted for another architecture."""
        fitted, given = (self.model_type, self.n_layers, self.hidden_size), architecture(model)
        if any(f is not None and f != g for f, g in zip(fitted, given)):
            raise ValueError(
                f"This risk model was fitted for {_describe(fitted)}, not for {_describe(given)}: fit one for this model "
                "with adapt_hooks.fit_risk(model, examples)."
            )

    def save(self, path: str | os.PathLike) -> None:
        meta = {**self.meta, "bias": self.bias, "model_type": self.model_type, "n_layers": self.n_layers,
                "hidden_size": self.hidden_size, "features": list(FEATURES)}  # fmt: skip
        persistence.save(path, KIND, {"weights": self.weights, "mean": self.mean, "std": self.std}, meta)

    @classmethod
    def load(cls, path: str | os.PathLike, model: nn.Module | None = None) -> RiskModel:
        """A risk model read from :meth:`save`'s file; with ``model``, refused unless fitted for its architecture."""
        tensors, meta = persistence.load(path, KIND, ("weights", "mean", "std"))
        if meta.get("features") != list(FEATURES):
            raise ValueError(f"{os.fspath(path)!r} reads features {meta.get('features')}, this adapt-hooks reads {list(FEATURES)}.")
        extra = {k: v for k, v in meta.items() if k not in ("bias", "model_type", "n_layers", "hidden_size", "features", "version")}
        risk = cls(tensors["weights"], float(meta.get("bias", 0.0)), tensors["mean"], tensors["std"],
                   meta.get("model_type"), meta.get("n_layers"), extra, meta.get("hidden_size"))  # fmt: skip
        if model is not None:
            risk.check(model)
        return risk


def architecture(model: nn.Module) -> tuple[str, int | None, int | None]:
    """``(model_type, decoder layers, decoder hidden size)``: what a risk model is fitted for."""
    text = model.config.get_text_config()
    return model.config.model_type, getattr(text, "num_hidden_layers", None), getattr(text, "hidden_size", None)


def _describe(arch: tuple) -> str:
    model_type, layers, hidden = arch
    return f"{model_type or 'any model'}" + (f" with {layers} decoder layers" if layers else "") + (f" of width {hidden}" if hidden else "")


class RiskStopping(StoppingCriteria):
    """A ``StoppingCriteria`` for ``model.generate``: a row stops once its risk (from ``monitor``,
    the guard's :class:`~adapt_hooks.DriftMonitor` with a risk model) passes ``threshold``. It reads
    the risk on the device, so it adds no host synchronisation to the decode loop.

    >>> monitor = DriftMonitor(steer=False, risk=RiskModel.load("risk.safetensors", model))  # doctest: +SKIP
    >>> with adapt_hooks.guard(model, monitor=monitor):                                     # doctest: +SKIP
    ...     out = model.generate(**inputs, stopping_criteria=[RiskStopping(monitor, 0.8)])
    """

    def __init__(self, monitor, threshold: float) -> None:
        if getattr(monitor, "risk_model", None) is None:
            raise ValueError("RiskStopping needs the guard's DriftMonitor built with a risk model: DriftMonitor(risk=RiskModel.load(...)).")
        self.monitor = monitor
        self.threshold = float(threshold)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        risk = self.monitor.latest_risk
        if risk is None or risk.shape[0] != input_ids.shape[0]:
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        return (risk > self.threshold).to(input_ids.device)
