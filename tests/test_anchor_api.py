"""Anchors built from maps, fusion variants, persistence and preset anchors, VE images, and the
debias mask (planted attention sink, save/load, layout checks)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter
from transformers.modeling_utils import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

import adapt_hooks
from adapt_hooks import Anchor, DebiasMask, DriftMonitor, scoring
from adapt_hooks.tiny import tiny_inputs, tiny_model

from .conftest import _model, generate


def _maps(batch=2, layers=3, h=6, w=7, seed=0):
    return torch.rand(batch, layers, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("fusion, weights", [("authors", scoring.COMBINED_WEIGHTS), ("paper", {"spectral": 0.4, "smooth": 0.3, "focus": 0.3})])
def test_from_layer_maps_runs_the_pipeline(fusion, weights):
    maps = _maps()
    anchor = Anchor.from_layer_maps(maps, [4, 9, 14], 16, fusion=fusion)
    scores = scoring.layer_scores(maps, [4, 9, 14], 16)
    combined = sum(weights[name] * scores[name] for name in weights)  # written out, not scoring.combine
    lw = torch.softmax(10 * (combined - combined.amin(-1, True)) / (combined.amax(-1, True) - combined.amin(-1, True)), -1)
    fused = (maps * lw[..., None, None]).sum(1)
    torch.testing.assert_close(anchor.layer_weights, lw)
    torch.testing.assert_close(anchor.fused, fused.flatten(1))
    torch.testing.assert_close(anchor.weights, scoring.refine(fused).flatten(1))
    torch.testing.assert_close(anchor.grid(1), scoring.refine(fused[1]))
    single = Anchor.from_layer_maps(maps[0], [4, 9, 14], 16, fusion=fusion)
    torch.testing.assert_close(single.weights[0], anchor.weights[0])


def test_fusion_variants_differ_and_are_validated():
    maps = _maps(seed=3)
    authors = Anchor.from_layer_maps(maps, [0, 1, 2], 3)
    paper = Anchor.from_layer_maps(maps, [0, 1, 2], 3, fusion="paper")
    assert not torch.allclose(authors.layer_weights, paper.layer_weights)
    with pytest.raises(ValueError, match="NaN or inf"):
        Anchor.from_layer_maps(torch.full((2, 4, 4), float("nan")), [0, 1], 2)
    with pytest.raises(ValueError, match="2 layer_ids for 3 maps"):
        Anchor.from_layer_maps(_maps(1), [0, 1], 3)


def test_save_load_round_trip(tmp_path, llava):
    inputs = tiny_inputs(llava, 2)
    with adapt_hooks.guard(llava, monitor=DriftMonitor(steer=False)) as run:
        generate(llava, inputs)
    run.anchor.save(tmp_path / "anchor.safetensors")
    loaded = Anchor.load(tmp_path / "anchor.safetensors")
    assert loaded.preset and loaded.layer_ids == run.anchor.layer_ids
    for name in ("weights", "maps", "fused", "layer_weights"):
        torch.testing.assert_close(getattr(loaded, name), getattr(run.anchor, name))
    assert loaded.layout.grid_shapes == run.anchor.layout.grid_shapes


def test_preset_anchor_skips_recording_and_matches_a_recorded_run(llava):
    inputs = tiny_inputs(llava, 1)
    monitor = dict(tau=1e9, alpha=2.0)
    with adapt_hooks.guard(llava, monitor=DriftMonitor(**monitor)) as recorded:
        generate(llava, inputs)
    preset = Anchor.from_weights(recorded.anchor.weights, [[(8, 8)]], maps=recorded.anchor.maps)
    with adapt_hooks.guard(llava, anchor=preset, monitor=DriftMonitor(**monitor)) as run:
        generate(llava, inputs)
    amc = run.monitor.history["amc"]
    assert amc.isfinite().all()  # monitored from the first decode step
    assert run.monitor.history["steered"].eq(1).all()
    torch.testing.assert_close(run.anchor.weights, recorded.anchor.weights)


def test_preset_anchor_broadcasts_to_sampled_rows(llava):
    inputs = tiny_inputs(llava, 1)
    weights = torch.rand(8, 8, generator=torch.Generator().manual_seed(0))
    preset = Anchor.from_weights(weights)
    torch.manual_seed(0)
    with adapt_hooks.guard(llava, anchor=preset, monitor=DriftMonitor(tau=1e9, normalize=None)) as run:
        out = llava.generate(**inputs, max_new_tokens=6, do_sample=True, num_return_sequences=3)
    assert out.shape[0] == 3 and run.anchor.weights.shape == (3, 64)
    torch.testing.assert_close(run.anchor.weights, weights.flatten().expand(3, 64))
    assert run.monitor.intervention_rate == 1.0


def test_preset_anchor_errors(llava):
    inputs = tiny_inputs(llava, 1)
    with pytest.raises(ValueError, match="no layer maps"):
        with adapt_hooks.guard(llava, anchor=Anchor.from_weights(torch.rand(8, 8))):
            generate(llava, inputs)
    with pytest.raises(ValueError, match=r"grids \[\(\(4, 4\),\)\] do not match"):
        with adapt_hooks.guard(llava, anchor=Anchor.from_weights(torch.rand(4, 4)), monitor=DriftMonitor(normalize=None)):
            generate(llava, inputs)


def test_corrupted_and_foreign_files_are_refused(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        Anchor.load(bad)
    mask = DebiasMask({(2, 2): torch.ones(2, 2)})
    mask.save(tmp_path / "mask.safetensors")
    with pytest.raises(ValueError, match="holds 'debias-mask', not an adapt-hooks anchor"):
        Anchor.load(tmp_path / "mask.safetensors")
    with pytest.raises(FileNotFoundError):
        DebiasMask.load(tmp_path / "missing.safetensors")


def test_ve_image_and_heatmap():
    image = Image.new("RGB", (40, 20), (10, 120, 200))
    anchor = Anchor.from_weights(torch.tensor([[1.0, 0.0], [1.0, 0.0]]))  # left half kept
    ve = torch.tensor(list(anchor.to_image(image).getdata()), dtype=torch.float32).view(20, 40, 3)
    assert torch.allclose(ve[:, :8], torch.tensor([10.0, 120, 200]), atol=1)  # m = 1: the image
    assert torch.allclose(ve[:, -8:], torch.tensor([255.0, 255, 255]), atol=1)  # m = 0: white
    boxed = torch.tensor(list(anchor.to_image(image, box=(20, 0, 40, 20)).getdata()), dtype=torch.float32).view(20, 40, 3)
    assert torch.allclose(boxed[:, :16], torch.tensor([255.0, 255, 255]), atol=1)  # outside the box: white
    assert torch.allclose(boxed[:, 20:24], torch.tensor([10.0, 120, 200]), atol=1)
    tiles = Anchor.from_weights(torch.tensor([[1.0, 1.0, 0.0, 0.0]]), [[(1, 2), (1, 2)]])  # two 1x2 grids
    both = tiles.to_image(image, index=None, box=[(0, 0, 20, 20), (20, 0, 40, 20)])
    assert both.getpixel((5, 10)) == (10, 120, 200) and both.getpixel((35, 10)) == (255, 255, 255)
    with pytest.raises(ValueError, match="one box per grid"):
        tiles.to_image(image, index=None)
    heat = anchor.heatmap(image, opacity=1.0)
    assert heat.size == image.size and heat.getpixel((2, 10)) == (255, 0, 0) and heat.getpixel((38, 10)) == (10, 120, 200)
    half = anchor.heatmap(image)  # opacity 0.6 where the anchor is 1: the image still shows through
    assert half.getpixel((2, 10)) == tuple(round(0.4 * c + 0.6 * h) for c, h in zip((10, 120, 200), (255, 0, 0)))


def test_ve_backgrounds_replace_the_white():
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)
    pixels[:, :20] = (200, 40, 0)  # left half bright, right half black
    image = Image.fromarray(pixels)
    anchor = Anchor.from_weights(torch.tensor([[1.0, 0.0], [1.0, 0.0]]))  # keep the left half
    as_array = lambda picture: np.asarray(picture, dtype=np.float64)  # noqa: E731
    mean = as_array(anchor.to_image(image, background="mean"))
    np.testing.assert_allclose(mean[:, -6:], np.broadcast_to([100.0, 20.0, 0.0], (20, 6, 3)), atol=1)  # the mean colour
    np.testing.assert_allclose(mean[:, :6], pixels[:, :6], atol=1)
    blurred = np.asarray(image.filter(ImageFilter.GaussianBlur(radius=40 / 16)), dtype=np.float64)
    blur = as_array(anchor.to_image(image, background="blur"))
    np.testing.assert_allclose(blur[:, -6:], blurred[:, -6:], atol=1)  # m = 0: the blurred copy
    assert blur[:, 21:26, 0].mean() > 5  # where the blur bleeds the bright half into the dark one
    with pytest.raises(ValueError, match="background= must be one of"):
        anchor.to_image(image, background="grey")


# -- debias ---------------------------------------------------------------------------------
SINK = 5  # image-token index that draws attention whatever the image shows


def _sink_mask(*args, **kwargs):
    """Additive masks with a content-free bias toward one image key: a model with a built-in sink."""
    mask = AttentionMaskInterface._global_mapping["eager"](*args, **kwargs)
    return mask.index_add(-1, torch.tensor([1 + SINK]), torch.full((*mask.shape[:-1], 1), 4.0, dtype=mask.dtype))


@pytest.fixture
def sink_model():
    AttentionInterface.register("sink_test", sdpa_attention_forward)
    AttentionMaskInterface.register("sink_test", _sink_mask)
    model = tiny_model("llava", "sdpa")
    model.config.get_text_config()._attn_implementation = "sink_test"
    yield model
    AttentionInterface._global_mapping.pop("sink_test")
    AttentionMaskInterface._global_mapping.pop("sink_test")


def test_debias_mask_suppresses_a_planted_sink(sink_model, tmp_path):
    model = sink_model
    mask = adapt_hooks.estimate_debias_mask(model, lambda: tiny_inputs(model, 1), n=3, seed=1)
    m = mask.masks[(8, 8)].flatten()
    assert m[SINK] < 0.2 and m[SINK] == m.min()  # the sink is scaled down to a uniform share
    assert (m <= 1).all() and (m > 0).all()
    assert mask.meta["model_type"] == "llava" and mask.meta["n"] == 3 and mask.meta["grids"] == ["8x8"]

    inputs = tiny_inputs(model, 1, seed=5)
    anchors = {}
    for name, debias in (("plain", None), ("debiased", mask)):
        with adapt_hooks.guard(model, anchor=Anchor(debias=debias), monitor=DriftMonitor(steer=False)) as run:
            generate(model, inputs)
        anchors[name] = run.anchor
    plain, debiased = anchors["plain"].fused[0], anchors["debiased"].fused[0]
    assert plain.argmax() == SINK and plain[SINK] > 20 * plain.median()  # the sink dominates the raw anchor
    assert debiased[SINK] < 3 * debiased.median()  # about a uniform share after debiasing
    torch.testing.assert_close(debiased, plain * m)

    mask.save(tmp_path / "mask.safetensors")
    loaded = DebiasMask.load(tmp_path / "mask.safetensors")
    torch.testing.assert_close(loaded.masks[(8, 8)], mask.masks[(8, 8)])
    assert loaded.meta["seed"] == 1 and loaded.meta["version"] == adapt_hooks.__version__


def test_debias_mask_for_another_layout_is_refused():
    model = _model("qwen2_vl", "sdpa")
    mask = DebiasMask({(8, 8): torch.ones(8, 8)}, {"model_type": "llava"})
    with pytest.raises(ValueError, match="estimated for grids 8x8, not 4x4"):
        with adapt_hooks.guard(model, anchor=Anchor(debias=mask)):
            generate(model, tiny_inputs(model, 1))


def test_debias_mask_from_a_processor():
    from adapt_hooks.tiny.llava import processor

    model = _model("llava", "sdpa")
    mask = adapt_hooks.estimate_debias_mask(model, processor(), n=2, prompt="describe the image .")
    assert set(mask.masks) == {(8, 8)}
    m = mask.masks[(8, 8)]
    assert (m > 0).all() and (m <= 1).all() and (m < 1).any()
    with pytest.raises(TypeError, match="processor or a callable"):
        adapt_hooks.estimate_debias_mask(model, "not a processor")
