"""Greedy guarded generation for the commands, with a clear error when the guard saw no decode step."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from . import compat
from .anchor import Anchor
from .hooks.guard import Guard, guard
from .methods.base import Method
from .monitor import DriftMonitor


def guarded_generate(
    model: nn.Module, inputs: dict, max_new_tokens: int, monitor: DriftMonitor | None = None, anchor: Anchor | None = None,
    methods: Sequence[Method] | None = None,
) -> tuple[torch.Tensor, Guard]:  # fmt: skip
    """The new tokens ``[batch, new]`` of a greedy ``model.generate`` inside a guard, and the guard.

    Raises ``ValueError`` when the guard observed no decode step (one new token comes from the
    prefill alone), so that a command never prints an empty table as if all were well.
    """
    with torch.no_grad(), guard(model, anchor=anchor, monitor=monitor, methods=methods) as run:
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    new = out[:, inputs["input_ids"].shape[1] :]
    if run.decode_steps == 0:
        raise ValueError(
            f"the guard observed no decode step (generated {new.shape[1]} token(s), transformers {compat.INSTALLED}): "
            "the first token comes from the prefill, so generate at least 2; otherwise run `adapt-hooks check`"
        )
    return new, run
