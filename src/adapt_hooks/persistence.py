"""Saving and loading the library's tensors (anchors, debias masks) as safetensors with metadata."""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ._version import __version__

FORMAT_KEY = "adapt_hooks.format"
META_KEY = "adapt_hooks.meta"


def save(path: str | os.PathLike, kind: str, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Write ``tensors`` (moved to CPU, made contiguous) and JSON ``meta`` tagged as ``kind``."""
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
    if not isinstance(meta, dict):
        raise ValueError(f"{path!r} is not a valid adapt-hooks {kind}: its metadata is not a JSON object.")
    if found != kind:
        raise ValueError(f"{path!r} holds {found or 'no adapt-hooks data'!r}, not an adapt-hooks {kind}.")
    missing = [name for name in required if name not in tensors]
    if missing:
        raise ValueError(f"{path!r} is an incomplete {kind}: missing tensors {missing}.")
    return tensors, meta


def check_tensor(name: str, tensor: torch.Tensor, ndim: int, *, floating: bool = True) -> torch.Tensor:
    """``tensor`` if it has ``ndim`` dimensions and a floating (or, with ``floating=False``,
    integer) dtype and finite values; else a ``ValueError`` saying what is wrong with ``name``."""
    if tensor.ndim != ndim:
        raise ValueError(f"{name} has shape {tuple(tensor.shape)}, expected {ndim} dimensions")
    if tensor.dtype.is_floating_point != floating or tensor.dtype == torch.bool or tensor.is_complex():
        raise ValueError(f"{name} has dtype {tensor.dtype}, expected {'a floating' if floating else 'an integer'} dtype")
    if floating and not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"{name} holds NaN or infinite values")
    return tensor
