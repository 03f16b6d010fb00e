"""Token batches for training and evaluation (same ids the processor produces, built directly)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from adapt_hooks.shapes import text
from adapt_hooks.shapes.world import N_KINDS, Scene

CAPTION_SHARE = 0.5


def example(scene: Scene, rng: np.random.Generator) -> tuple[list[int], list[int]]:
    """One training example of ``scene``: (prompt ids, answer ids with ``</s>``).

    Half are descriptions; half yes/no questions, balanced between a present kind ("yes") and a
    uniformly drawn absent kind ("no")."""
    if rng.random() < CAPTION_SHARE:
        return text.prompt_ids(text.DESCRIBE), text.encode(text.caption(scene.kinds)) + [text.EOS]
    if rng.random() < 0.5:
        kind, answer = scene.kinds[int(rng.integers(len(scene.kinds)))], "yes"
    else:
        absent = [k for k in range(N_KINDS) if k not in scene.objects]
        kind, answer = absent[int(rng.integers(len(absent)))], "no"
    return text.prompt_ids(text.question(kind)), text.encode(answer) + [text.EOS]


def collate(pairs: Sequence[tuple[list[int], list[int]]]) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (-100 outside answers)."""
    length = max(len(p) + len(a) for p, a in pairs)
    ids = torch.full((len(pairs), length), text.PAD)
    labels = torch.full((len(pairs), length), -100)
    mask = torch.zeros((len(pairs), length), dtype=torch.long)
    for b, (prompt, answer) in enumerate(pairs):
        seq = prompt + answer
        ids[b, : len(seq)] = torch.tensor(seq)
        labels[b, len(prompt) : len(seq)] = torch.tensor(answer)
        mask[b, : len(seq)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def prompts(texts: Sequence[str], scenes: Sequence[Scene]) -> dict[str, torch.Tensor]:
    """Inputs of one prompt per scene (all prompts of one call have the same length: no padding)."""
    rows = [text.prompt_ids(t) for t in texts]
    if len({len(r) for r in rows}) != 1:
        raise ValueError("prompts() batches prompts of one length only")
    ids = torch.tensor(rows)
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "pixel_values": text.pixel_values(np.stack([s.pixels for s in scenes])),
    }
