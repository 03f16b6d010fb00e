"""Property tests of the layer scores, fusion and refinement on arbitrary maps: ranges, scale
invariance, degenerate inputs (constant, zero, tiny and large grids) and reduced precision."""

from __future__ import annotations

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from adapt_hooks import scoring

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True)  # same examples on every run: CI cannot flake


@st.composite
def layer_maps(draw, constant=False):
    layers = draw(st.integers(1, 4))
    h, w = draw(st.integers(1, 24)), draw(st.integers(1, 24))
    seed = draw(st.integers(0, 2**16))
    if constant:
        value = draw(st.sampled_from([0.0, 1e-9, 0.3, 50.0]))
        return torch.full((layers, h, w), value)
    scale = draw(st.sampled_from([1e-6, 1e-2, 1.0, 1e3]))
    maps = torch.rand(layers, h, w, generator=torch.Generator().manual_seed(seed)) * scale
    sparse = draw(st.booleans())
    return maps * (maps > 0.7 * scale) if sparse else maps


def _scores(maps):
    layers = maps.shape[0]
    return scoring.layer_scores(maps, list(range(layers)), max(layers, 2))


@SETTINGS
@given(layer_maps())
def test_scores_lie_in_unit_interval(maps):
    for name, value in _scores(maps).items():
        assert value.shape == (maps.shape[0],) and value.dtype == torch.float32, name
        assert value.isfinite().all() and (value >= 0).all() and (value <= 1 + 1e-6).all(), name


@SETTINGS
@given(layer_maps(), st.sampled_from([1e-3, 7.0, 1e4]))
def test_scores_except_smoothness_are_scale_invariant(maps, factor):
    # the boundary score treats means below 1e-6 as "no attention" (an absolute threshold, per spec)
    assume(maps.amax() * min(1.0, factor) >= 1e-3)
    base, scaled = _scores(maps), _scores(maps * factor)
    for name in ("boundary", "spectral", "focus", "position"):
        torch.testing.assert_close(scaled[name], base[name], atol=2e-4, rtol=1e-3, msg=name)


@SETTINGS
@given(layer_maps())
def test_fusion_weights_are_a_distribution(maps):
    weights = scoring.fusion_weights(_scores(maps)["combined"])
    assert (weights >= 0).all()
    torch.testing.assert_close(weights.sum(), torch.tensor(1.0))


@SETTINGS
@given(layer_maps())
def test_refine_gives_weights_that_peak_at_one(maps):
    w = scoring.refine(maps)
    assert w.shape == maps.shape and w.isfinite().all()
    assert (w >= 0).all() and (w <= 1).all()
    flat = w.flatten(1)
    peaked = flat.amax(1) == 1
    constant = (flat == 0.5).all(1)
    assert (peaked | constant).all()


@SETTINGS
@given(layer_maps(), st.sampled_from([1e-3, 5.0, 1e4]))
def test_refine_is_scale_invariant(maps, factor):
    torch.testing.assert_close(scoring.refine(maps * factor), scoring.refine(maps), atol=1e-4, rtol=1e-4)


@SETTINGS
@given(layer_maps(constant=True))
def test_constant_maps_have_documented_results(maps):
    scores = _scores(maps)
    assert torch.all(scores["spectral"] == 0.5) and torch.all(scores["focus"] == 0)
    assert torch.all(scoring.refine(maps) == 0.5)


@SETTINGS
@given(layer_maps(), st.sampled_from([torch.float16, torch.bfloat16]))
def test_half_precision_inputs_are_computed_in_float32(maps, dtype):
    maps = maps / maps.amax().clamp_min(1e-30)  # representable range
    low = maps.to(dtype)
    for name, value in _scores(low).items():
        assert value.dtype == torch.float32
        torch.testing.assert_close(value, _scores(low.float())[name], msg=name)
    torch.testing.assert_close(scoring.refine(low), scoring.refine(low.float()))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_maps_raise(bad):
    maps = torch.rand(2, 5, 5)
    maps[1, 2, 3] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        scoring.layer_scores(maps, [0, 1], 2)
    with pytest.raises(ValueError, match="NaN or inf"):
        scoring.refine(maps)
