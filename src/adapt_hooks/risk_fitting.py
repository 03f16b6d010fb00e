"""Fitting a :class:`~adapt_hooks.RiskModel` for a model from captions whose hallucinated tokens
are known: each caption is replayed under an observe-only guard, the risk features of its
labelled tokens are collected, and a logistic regression is fitted on them."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn

from .anchor import Anchor
from .hooks.guard import guard
from .monitor import DriftMonitor
from .risk import RiskModel, architecture


def fit_logistic(x: torch.Tensor, y: torch.Tensor, *, l2: float = 1e-3, steps: int = 200) -> tuple[torch.Tensor, float, torch.Tensor, torch.Tensor]:
    """Weights, bias, mean and std of a logistic regression of ``y`` ``[N]`` (0/1) on ``x``
    ``[N, F]``: features standardised, L2-penalised cross-entropy minimised with L-BFGS (deterministic)."""
    x, y = x.double(), y.double()
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    z = (x - mean) / std
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        optimiser.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(z @ w + b, y) + l2 * w.square().sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    return w.detach().float(), float(b.detach()), mean.float(), std.float()


def fit_risk(model: nn.Module, examples: Iterable[Mapping[str, object]], *, anchor: Anchor | None = None, l2: float = 1e-3) -> RiskModel:
    """A risk model for ``model`` from captions with known hallucinations.

    Each example is ``{"inputs": processor outputs of one prompt (batch 1), "tokens": [T] the
    caption's token ids, "labels": [T] 1 where the token is (the start of) a hallucination, 0 where
    it is correct, -1 to ignore}``. The caption is replayed through the model under an
    observe-only guard (greedy generation forced to ``tokens``), the features of every labelled
    token after the anchor phase are collected, and a logistic regression is fitted on them.
    """
    k = (anchor or Anchor()).k
    xs, ys = [], []
    for example in examples:
        tokens = torch.as_tensor(example["tokens"]).flatten()
        labels = torch.as_tensor(example["labels"]).flatten()
        monitor = DriftMonitor(steer=False, history=False, risk=RiskModel.untrained())
        with guard(model, anchor=Anchor(k=k), monitor=monitor):
            _replay(model, example["inputs"], tokens)
        features = monitor.risk_features  # [steps, 1, F]: row s for token s + 1
        for s in range(k, features.shape[0]):
            if s + 1 < len(labels) and labels[s + 1] >= 0:
                xs.append(features[s, 0])
                ys.append(float(labels[s + 1]))
    if not ys or len(set(ys)) < 2:
        raise ValueError("fit_risk needs labelled tokens of both kinds (1: hallucinated, 0: correct) after the anchor phase.")
    w, b, mean, std = fit_logistic(torch.stack(xs), torch.tensor(ys), l2=l2)
    model_type, layers, hidden = architecture(model)
    return RiskModel(w, b, mean, std, model_type, layers, {"fitted_on_tokens": len(ys), "positives": int(sum(ys))}, hidden)


@torch.no_grad()
def _replay(model: nn.Module, inputs: Mapping[str, torch.Tensor], tokens: torch.Tensor) -> None:
    """Greedy generation forced to ``tokens`` (the model sees its own caption, step by step)."""
    from transformers import LogitsProcessor, LogitsProcessorList

    class Force(LogitsProcessor):
        def __call__(self, input_ids, scores):
            position = input_ids.shape[1] - inputs["input_ids"].shape[1]
            forced = torch.full_like(scores, float("-inf"))
            forced[:, tokens[min(position, len(tokens) - 1)]] = 0.0
            return forced

    n = len(tokens)
    model.generate(**inputs, max_new_tokens=n, do_sample=False, logits_processor=LogitsProcessorList([Force()]))
