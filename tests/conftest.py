"""Shared fixtures: tiny random-weight models of every supported family and attention
implementation. The battery runs on all of them; ``ADAPT_HOOKS_FAMILIES=llava,qwen2_vl``
restricts it to some families. Every test outside the command-line and docs pages is part of the
``conformance`` battery (``pytest -m conformance``), which CI also runs on the oldest supported
transformers."""

from __future__ import annotations

import functools
import os

import pytest
import torch

from adapt_hooks import compat
from adapt_hooks.tiny import _FAMILIES, tiny_model

torch.set_num_threads(1)  # tiny models: threads only add contention

_selected = os.environ.get("ADAPT_HOOKS_FAMILIES")
FAMILIES = [f for f in _FAMILIES if not _selected or f in _selected.split(",")]
CASES = [(family, attn) for family in FAMILIES for attn in _FAMILIES[family].attention]


@functools.lru_cache(maxsize=None)
def _model(family: str, attn: str):
    return tiny_model(family, attn)


@pytest.fixture(params=CASES, ids=[f"{f}-{a}" for f, a in CASES])
def model(request):
    """Every (family, attention implementation) pair; built once per session, never modified."""
    return _model(*request.param)


@pytest.fixture
def llava():
    return _model("llava", "eager")


#: Test modules outside the conformance battery: they exercise the command line, the docs pages
#: (subprocesses, most of the suite's time) and training through TRL and accelerate, not the guard
#: on another transformers.
_INTERFACE_MODULES = ("test_cli", "test_docs", "test_trl", "test_accelerate")


def pytest_report_header(config):
    import transformers

    return f"adapt-hooks: transformers {transformers.__version__} (tested range {compat.tested_range()}), torch {torch.__version__}"


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.module.__name__.rsplit(".", 1)[-1] not in _INTERFACE_MODULES:
            item.add_marker(pytest.mark.conformance)


def generate(model, inputs, **kwargs):
    kwargs.setdefault("max_new_tokens", 10)
    return model.generate(**inputs, do_sample=False, **kwargs)
