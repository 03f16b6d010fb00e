"""Shared fixtures: tiny random-weight models of every supported family, for eager and sdpa."""

from __future__ import annotations

import functools

import pytest
import torch

from adapt_hooks.tiny import MODEL_TYPES, tiny_inputs, tiny_model

torch.set_num_threads(2)
ATTENTION = ("eager", "sdpa")
CASES = [(family, attn) for family in MODEL_TYPES for attn in ATTENTION]


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


def generate(model, inputs, **kwargs):
    kwargs.setdefault("max_new_tokens", 10)
    return model.generate(**inputs, do_sample=False, **kwargs)


@pytest.fixture
def inputs_for():
    return tiny_inputs
