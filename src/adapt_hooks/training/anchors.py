"""Anchors for a whole training set: one observe-only ``generate`` per batch of records (not per
record), a progress bar, and a cache of safetensors shards (one per batch) that later runs reuse
and an interrupted run resumes from. Memory is bounded by the batch, not the dataset."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from ..anchor import Anchor
from ..hooks.guard import guard
from ..monitor import DriftMonitor
from ..prompts import chat_prompt
from ..validation import check_count


def _settings(model: nn.Module, anchor: Anchor, batch_size: int) -> str:
    """What a cached shard depends on besides the records: the model and the anchor's settings."""
    name = getattr(model.config, "_name_or_path", "") or model.config.model_type
    return json.dumps({"model": name, "k": anchor.k, "fusion": anchor.fusion, "temperature": anchor.temperature,
                       "debias": repr(anchor.debias), "batch_size": batch_size}, sort_keys=True)  # fmt: skip


@torch.no_grad()
def batch_anchors(model: nn.Module, processor, images: Sequence, questions: Sequence[str], anchor: Anchor | None = None) -> list[torch.Tensor]:
    """The ``[H, W]`` anchor grid (first image grid of each row) of each ``(image, question)``,
    from one left-padded batch generated greedily for ``k + 1`` tokens under an observe-only guard."""
    template = anchor or Anchor()
    anchor = Anchor(template.k, fusion=template.fusion, temperature=template.temperature, debias=template.debias)
    tokenizer = processor.tokenizer
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        texts = [chat_prompt(processor, q) for q in questions]
        inputs = processor(images=list(images), text=texts, padding=True, return_tensors="pt").to(model.device)
    finally:
        tokenizer.padding_side = side
    was_training = model.training
    model.eval()
    try:
        with guard(model, anchor=anchor, monitor=DriftMonitor(steer=False, history=False)):
            model.generate(**inputs, max_new_tokens=anchor.k + 1, min_new_tokens=anchor.k + 1, do_sample=False)
    finally:
        model.train(was_training)
    if anchor.weights is None:
        raise ValueError("No anchor: the prompts have no image tokens (does the processor insert them?).")
    return [anchor.grid(b, 0).float().cpu() for b in range(len(questions))]


def iter_anchors(
    model: nn.Module,
    processor,
    images: Sequence,
    questions: Sequence[str],
    *,
    batch_size: int = 8,
    cache_dir: str | os.PathLike | None = None,
    anchor: Anchor | None = None,
    progress: bool = True,
) -> Iterator[torch.Tensor]:
    """Each record's ``[H, W]`` anchor grid, in order, computed ``batch_size`` records at a time.

    With ``cache_dir``, each batch is stored as ``anchors-<start>-<stop>.safetensors`` and read
    back instead of recomputed on a later call with the same model, anchor settings and batch size
    (a shard written with other settings raises: choose another directory or delete it). The
    cache knows the model by its name, not its weights: give a fine-tuned model its own directory."""
    from tqdm.auto import tqdm

    batch_size = check_count("batch_size", batch_size)
    if len(images) != len(questions):
        raise ValueError(f"{len(images)} images but {len(questions)} questions.")
    anchor = anchor or Anchor()
    settings = _settings(model, anchor, batch_size)
    root = None if cache_dir is None else Path(cache_dir)
    if root is not None:
        root.mkdir(parents=True, exist_ok=True)
    for start in tqdm(range(0, len(images), batch_size), desc="anchors", unit="batch", disable=not progress):
        stop = min(start + batch_size, len(images))
        yield from _cached(root, start, stop, settings, lambda: batch_anchors(model, processor, images[start:stop], questions[start:stop], anchor))


def _cached(root: Path | None, start: int, stop: int, settings: str, compute) -> list[torch.Tensor]:
    """Records ``start:stop``'s grids from their shard under ``root``, else ``compute()`` them and write it."""
    shard = None if root is None else root / f"anchors-{start:08d}-{stop:08d}.safetensors"
    if shard is not None and shard.exists():
        return _read_shard(shard, settings, stop - start)
    grids = compute()
    if shard is not None:
        save_file({str(i): g.contiguous() for i, g in enumerate(grids)}, str(shard), metadata={"settings": settings})
    return grids


def _read_shard(path: Path, settings: str, count: int) -> list[torch.Tensor]:
    with safe_open(str(path), framework="pt") as f:
        stored = (f.metadata() or {}).get("settings")
        if stored != settings:
            raise ValueError(
                f"{path} holds anchors computed with other settings ({stored}; now {settings}): use another "
                "cache_dir, or delete the directory to recompute."
            )
        return [f.get_tensor(str(i)) for i in range(count)]


def add_anchors(dataset, model: nn.Module, processor, *, question_column: str | None = None, batch_size: int = 8,
                cache_dir: str | os.PathLike | None = None, anchor: Anchor | None = None):  # fmt: skip
    """A ``datasets.Dataset`` of image preference records with an ``"anchor"`` column (each record's
    ``[H, W]`` grid), computed ``batch_size`` records at a time with ``Dataset.map`` (its progress
    bar; memory bounded by the batch) and cached in ``cache_dir`` as :func:`iter_anchors` does."""
    from datasets.fingerprint import Hasher

    column = question_column or ("question" if "question" in dataset.column_names else "prompt")
    missing = [name for name in ("image", column) if name not in dataset.column_names]
    if missing:
        raise ValueError(f"add_anchors needs columns 'image' and a question ('question' or 'prompt'); missing {missing}.")
    batch_size = check_count("batch_size", batch_size)
    anchor = anchor or Anchor()
    settings = _settings(model, anchor, batch_size)
    root = None if cache_dir is None else Path(cache_dir)
    if root is not None:
        root.mkdir(parents=True, exist_ok=True)

    def anchors(batch, indices):
        start, stop = indices[0], indices[-1] + 1
        compute = lambda: batch_anchors(model, processor, batch["image"], batch[column], anchor)  # noqa: E731
        return {"anchor": [g.tolist() for g in _cached(root, start, stop, settings, compute)]}

    fingerprint = Hasher.hash((dataset._fingerprint, settings, str(root)))  # not the model's weights: see iter_anchors
    return dataset.map(anchors, batched=True, batch_size=batch_size, with_indices=True, desc="anchors", new_fingerprint=fingerprint)
