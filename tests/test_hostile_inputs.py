"""Hostile inputs: a wrong adapter, bad settings, corrupted anchor and debias-mask files. Each is
refused with a clear error, and nothing stays installed on the model afterwards.

Elsewhere: image tokens that do not match the images
(tests/test_lifecycle.py::test_image_tokens_that_do_not_match_the_images_are_refused), NaN and
negative tau, alpha inf, k 0 or 2.5 (tests/test_lifecycle.py::test_bad_settings_are_rejected)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import adapt_hooks
from adapt_hooks import Adapter, Anchor, DebiasMask, DriftMonitor
from adapt_hooks.adapters import _REGISTRY, Qwen2VLAdapter
from adapt_hooks.persistence import FORMAT_KEY, META_KEY
from adapt_hooks.tiny import tiny_inputs

from .conftest import _model, generate
from .test_lifecycle import snapshot


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: DriftMonitor(alpha=float("nan")), "alpha"),
        (lambda: DriftMonitor(alpha=-1.0), "alpha"),
        (lambda: DriftMonitor(tau=float("-inf")), "tau"),
        (lambda: DriftMonitor(tau="0.6"), "tau"),
        (lambda: DriftMonitor(tau=True), "tau"),
        (lambda: Anchor(k=-3), "positive integer"),
        (lambda: Anchor(k=float("nan")), "positive integer"),
        (lambda: Anchor(k=True), "positive integer"),
        (lambda: Anchor(k="5"), "positive integer"),
        (lambda: Anchor(temperature=0.0), "temperature"),
        (lambda: adapt_hooks.estimate_debias_mask(None, lambda: {}, n=0), "positive integer"),
    ],
)
def test_more_bad_settings_are_rejected(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_numpy_numbers_are_accepted():
    monitor = DriftMonitor(tau=np.float32(0.5), alpha=np.float64(1.0))
    assert monitor.tau == 0.5 and type(monitor.tau) is float
    assert Anchor(k=np.int64(3)).k == 3


class _WrongGrid(Adapter):
    """An adapter for LLaVA whose grid does not tile the 64 image tokens."""

    model_types = ("llava",)

    def row_grids(self, config, is_image, n_tokens, inputs):
        return [[(7, 7)] for _ in n_tokens]


@pytest.mark.parametrize(
    "adapter, match",
    [(Qwen2VLAdapter(), r"image_grid_thw|position_ids|grid"), (_WrongGrid(), r"64 image tokens but its grids \[\(7, 7\)\]")],
    ids=["other-family", "wrong-grid"],
)
def test_a_wrong_adapter_is_refused_at_prefill_and_nothing_stays(monkeypatch, adapter, match):
    model = _model("llava", "sdpa")
    inputs = tiny_inputs(model, 1)
    before = snapshot(model)
    monkeypatch.setitem(_REGISTRY, "llava", adapter)
    with pytest.raises(ValueError, match=match):
        with adapt_hooks.guard(model):
            generate(model, inputs)
    assert snapshot(model) == before


def test_errors_while_decoding_leave_nothing_installed(llava):
    """A guard whose decode step fails (here: a preset anchor of another layout, refused at
    prefill) leaves the model exactly as it found it; the next guard works."""
    inputs = tiny_inputs(llava, 1)
    before = snapshot(llava)
    with pytest.raises(ValueError, match="do not match this prompt's image grids"):
        with adapt_hooks.guard(llava, anchor=Anchor.from_weights(torch.rand(4, 4)), monitor=DriftMonitor(normalize=None)):
            generate(llava, inputs)
    assert snapshot(llava) == before
    with adapt_hooks.guard(llava) as run:
        generate(llava, inputs)
    assert run.anchor.weights is not None


def _file(tmp_path, name, tensors, kind="anchor", meta="{}"):
    path = tmp_path / name
    save_file(tensors, str(path), metadata={FORMAT_KEY: kind, META_KEY: meta})
    return path


GRIDS = torch.tensor([[0, 0, 8, 8]])
BAD_ANCHORS = {
    "weights 1-D": ({"weights": torch.rand(64), "grids": GRIDS}, "{}", "weights has shape"),
    "NaN weights": ({"weights": torch.full((1, 64), float("nan")), "grids": GRIDS}, "{}", "NaN"),
    "negative weights": ({"weights": -torch.rand(1, 64), "grids": GRIDS}, "{}", "negative"),
    "integer weights": ({"weights": torch.ones(1, 64, dtype=torch.long), "grids": GRIDS}, "{}", "dtype"),
    "float grids": ({"weights": torch.rand(1, 64), "grids": GRIDS.float()}, "{}", "grids has dtype"),
    "short grid rows": ({"weights": torch.rand(1, 64), "grids": GRIDS[:, 1:]}, "{}", "grids must be rows"),
    "grid of another row": ({"weights": torch.rand(1, 64), "grids": GRIDS + torch.tensor([3, 0, 0, 0])}, "{}", "row < 1"),
    "grid too big": ({"weights": torch.rand(1, 64), "grids": GRIDS + torch.tensor([0, 0, 1, 1])}, "{}", "hold 81 tokens"),
    "empty grid": ({"weights": torch.rand(1, 64), "grids": GRIDS * torch.tensor([1, 1, 0, 1])}, "{}", "without tokens"),
    "maps of another shape": ({"weights": torch.rand(1, 64), "grids": GRIDS, "maps": torch.rand(2, 3, 64)}, "{}", "maps has shape"),
    "bad k": ({"weights": torch.rand(1, 64), "grids": GRIDS}, '{"k": "five"}', "k must be a positive integer"),
    "metadata not an object": ({"weights": torch.rand(1, 64), "grids": GRIDS}, "[1]", "metadata is not a JSON object"),
}


@pytest.mark.parametrize("case", BAD_ANCHORS, ids=list(BAD_ANCHORS))
def test_corrupted_anchor_files_are_refused_naming_the_file(tmp_path, case):
    tensors, meta, match = BAD_ANCHORS[case]
    path = _file(tmp_path, "anchor.safetensors", tensors, meta=meta)
    with pytest.raises(ValueError, match=rf"anchor\.safetensors' is not a valid adapt-hooks anchor: .*{match}"):
        Anchor.load(path)


def test_truncated_and_empty_files_are_refused(tmp_path):
    Anchor.from_weights(torch.rand(8, 8)).save(tmp_path / "good.safetensors")
    data = (tmp_path / "good.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:-40])
    (tmp_path / "empty.safetensors").write_bytes(b"")
    for name in ("cut", "empty"):
        for load in (Anchor.load, DebiasMask.load):
            with pytest.raises(ValueError, match=rf"{name}\.safetensors' is not a readable safetensors file"):
                load(tmp_path / f"{name}.safetensors")


BAD_MASKS = {
    "shape": ({"2x2": torch.ones(3, 3)}, "mask 2x2 has shape"),
    "NaN": ({"2x2": torch.full((2, 2), float("nan"))}, "NaN"),
    "negative": ({"2x2": -torch.ones(2, 2)}, r"outside \[0, 1\]"),
    "name": ({"axb": torch.ones(2, 2)}, "not named HxW"),
    "empty": ({}, "at least one grid mask"),
}


@pytest.mark.parametrize("case", BAD_MASKS, ids=list(BAD_MASKS))
def test_corrupted_debias_masks_are_refused_naming_the_file(tmp_path, case):
    tensors, match = BAD_MASKS[case]
    path = _file(tmp_path, "mask.safetensors", tensors, kind="debias-mask")
    with pytest.raises(ValueError, match=rf"mask\.safetensors' is not a valid adapt-hooks debias mask: .*{match}"):
        DebiasMask.load(path)
