"""Saving and loading the library's tensors (anchors, debias masks) as safetensors with metadata."""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

FORMAT_KEY = "adapt_hooks.format"
META_KEY = "adapt_hooks.meta"


def save(path: str | os.PathLike, kind: str, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Write ``tensors`` (moved to CPU, made contiguous) and JSON ``meta`` tagged as ``kind``."""
    from . import __version__

    meta = {**meta, "version": __version__}
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items() if t is not None}
    save_file(tensors, os.fspath(path), metadata={FORMAT_KEY: kind, META_KEY: json.dumps(meta)})


def load(path: str | os.PathLike, kind: str, required: tuple[str, ...]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a file written by :func:`save` as ``kind``; a clear ``ValueError`` for anything else."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No such file: {path!r}.")
    try:
        tensors = load_file(path)
        with open(path, "rb") as f:
            header_size = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(header_size))
        metadata = header.get("__metadata__") or {}
        found = metadata.get(FORMAT_KEY)
        meta = json.loads(metadata.get(META_KEY, "{}"))
    except (SafetensorError, ValueError, OSError, UnicodeDecodeError) as error:
        raise ValueError(f"{path!r} is not a readable safetensors file ({error}).") from error
    if found != kind:
        raise ValueError(f"{path!r} holds {found or 'no adapt-hooks data'!r}, not an adapt-hooks {kind}.")
    missing = [name for name in required if name not in tensors]
    if missing:
        raise ValueError(f"{path!r} is an incomplete {kind}: missing tensors {missing}.")
    return tensors, meta
