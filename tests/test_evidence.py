"""The hallucination benchmark's pieces: the synthetic world, the metrics, the stored tiny LLaVA
and the guard on it (benchmarks/evidence, docs/evidence.md)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import adapt_hooks
from adapt_hooks import DriftMonitor

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from adapt_hooks.shapes import text, world  # noqa: E402
from evidence import batches, metrics  # noqa: E402
from evidence.evaluate import describe, other_absent_rate, partner_rate  # noqa: E402
from adapt_hooks.shapes.model import WEIGHTS_DIR, load_model, load_processor  # noqa: E402

torch.set_num_threads(1)


# -- world -------------------------------------------------------------------------------------
def test_training_distribution_has_strong_rare_partner_correlations():
    rng = np.random.default_rng(123)
    kind_sets = [world.sample_training_kinds(rng) for _ in range(6000)]
    assert all(world.MIN_OBJECTS <= len(ks) <= world.MAX_OBJECTS and len(set(ks)) == len(ks) for ks in kind_sets)
    for stats in world.cooccurrence_stats(kind_sets).values():
        assert stats["P(B|A)"] > 0.9
        assert stats["P(B|not A)"] < 0.1
        assert stats["P(A|B)"] > 0.85


def test_decorrelated_scenes_break_every_correlation():
    scenes = world.decorrelated_scenes(np.random.default_rng(7), 25)
    assert len(scenes) == 25 * len(world.PARTNER_OF)
    stats = world.cooccurrence_stats([s.kinds for s in scenes])
    for pair in stats.values():
        assert pair["P(B|A)"] == 0.0 and pair["P(A|B)"] == 0.0
    for scene in scenes:
        paired = [k for k in scene.kinds if k in world.PARTNER_OF]
        assert len(paired) == 1
        assert world.missing_partner(scene) == world.PARTNER_OF[paired[0]]
        assert world.missing_partner(scene) not in scene.objects


def test_scenes_are_seeded_and_objects_are_where_they_are_drawn():
    a = world.training_scenes(np.random.default_rng(3), 5)
    b = world.training_scenes(np.random.default_rng(3), 5)
    assert all(x.kinds == y.kinds and np.array_equal(x.pixels, y.pixels) for x, y in zip(a, b))
    for scene in a:
        for kind, (cx, cy, r) in zip(scene.kinds, scene.places):
            colour = np.array(world.RGB[world.KINDS[kind][0]], dtype=float)
            if world.KINDS[kind][1] == "ring":  # hollow: sample the outline
                patch = scene.pixels[cy - 1 : cy + 2, cx + r - 1 : cx + r + 1]
            else:
                patch = scene.pixels[cy - 1 : cy + 2, cx - 1 : cx + 2]
            assert np.abs(patch.reshape(-1, 3).mean(0) - colour).max() < 40
        assert world.object_mask(scene, text.GRID).any()


def test_training_captions_can_name_undrawn_objects_but_held_out_scenes_draw_all():
    scenes = world.training_scenes(np.random.default_rng(4), 400, p_hidden=0.3)
    assert any(s.hidden for s in scenes)
    for scene in scenes:
        assert scene.visible and len(scene.places) == len(scene.visible)
        assert set(scene.visible) | scene.hidden == scene.objects
    assert all(not s.hidden for s in world.training_scenes(np.random.default_rng(4), 50))
    assert all(not s.hidden for s in world.decorrelated_scenes(np.random.default_rng(4), 10))


# -- text --------------------------------------------------------------------------------------
def test_captions_parse_back_to_their_objects():
    for kinds in [(0, 1), (4,), (7, 2, 5, 3)]:
        ids = text.encode(text.caption(kinds))
        assert text.mentioned_kinds(ids) == set(kinds)
    ids = text.encode("there is a red square and a blue square .")  # "red square" is no kind
    assert text.mentions(ids) == {("red", "square"), ("blue", "square")}
    assert text.mentioned_kinds(ids) == {1}
    assert text.trim([5, 6, text.EOS, 7]) == [5, 6]


def test_processor_matches_the_fast_path_used_in_training():
    processor = load_processor()
    scenes = world.training_scenes(np.random.default_rng(0), 3)
    encoded = processor(images=[s.image() for s in scenes], text=[f"<image> {text.DESCRIBE}"] * 3, return_tensors="pt")
    assert encoded["input_ids"][0].tolist() == text.prompt_ids(text.DESCRIBE)
    fast = text.pixel_values(np.stack([s.pixels for s in scenes]))
    assert torch.allclose(encoded["pixel_values"], fast, atol=1e-5)


# -- metrics -----------------------------------------------------------------------------------
def test_chair_on_a_hand_computed_case():
    mentioned = [{"a", "b"}, {"c"}, set()]
    truth = [{"a"}, {"c", "d"}, {"e"}]
    result = metrics.chair(mentioned, truth)
    assert result["CHAIR_i"] == pytest.approx(1 / 3)  # b is the one hallucinated mention of 3
    assert result["CHAIR_s"] == pytest.approx(1 / 3)  # 1 of 3 captions
    assert result["recall"] == pytest.approx(2 / 4)  # a, c found of a, c, d, e


def test_pope_on_a_hand_computed_case():
    predicted = [True, True, False, False, True, True]
    labels = [True, False, False, True, True, False]
    result = metrics.pope(predicted, labels)  # tp 2, fp 2, fn 1, tn 1
    assert result["accuracy"] == pytest.approx(3 / 6)
    assert result["precision"] == pytest.approx(2 / 4)
    assert result["recall"] == pytest.approx(2 / 3)
    assert result["F1"] == pytest.approx(2 * (1 / 2) * (2 / 3) / (1 / 2 + 2 / 3))
    assert result["yes_ratio"] == pytest.approx(4 / 6)
    assert metrics.mean_std([1.0, 3.0]) == pytest.approx((2.0, 2**0.5))


# -- the stored model --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model():
    return load_model(attn_implementation="eager")


def test_stored_model_is_a_small_stock_llava(model):
    from transformers import LlavaForConditionalGeneration

    assert isinstance(model, LlavaForConditionalGeneration)
    assert model.config.model_type in adapt_hooks.supported_models()
    assert model.config.image_token_id == text.IMAGE
    assert model.config.vision_config.image_size // model.config.vision_config.patch_size == text.GRID
    assert (WEIGHTS_DIR / "model.safetensors").stat().st_size < 6_000_000


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_observe_only_guard_is_bit_identical(attn):
    model = load_model(attn_implementation=attn)
    scenes = world.decorrelated_scenes(np.random.default_rng(5), 3)
    inputs = batches.prompts([text.DESCRIBE] * len(scenes), scenes)
    kwargs = dict(max_new_tokens=16, do_sample=False, output_scores=True, return_dict_in_generate=True)
    with torch.no_grad():
        plain = model.generate(**inputs, **kwargs)
        with adapt_hooks.guard(model, monitor=DriftMonitor(steer=False)) as run:
            observed = model.generate(**inputs, **kwargs)
    assert torch.equal(plain.sequences, observed.sequences)
    assert all(torch.equal(a, b) for a, b in zip(plain.scores, observed.scores))
    assert run.anchor.weights is not None and run.anchor.weights.shape == (len(scenes), text.N_IMAGE_TOKENS)
    assert run.monitor.history["visual_mass"].shape[1:] == (model.config.text_config.num_hidden_layers, len(scenes))


def test_default_guard_runs_and_steers_only_after_the_anchor(model):
    scenes = world.decorrelated_scenes(np.random.default_rng(6), 4)
    inputs = batches.prompts([text.DESCRIBE] * len(scenes), scenes)
    with torch.no_grad(), adapt_hooks.guard(model, monitor=DriftMonitor(tau=10.0)) as run:
        model.generate(**inputs, max_new_tokens=12, do_sample=False)
    steered = run.monitor.history["steered"]
    assert steered[: run.anchor.k].sum() == 0 and steered[run.anchor.k :].sum() > 0


def test_model_describes_correlated_held_out_scenes(model):
    scenes = world.training_scenes(np.random.default_rng(99_999), 48)
    desc = describe(model, scenes)
    result = metrics.chair([text.mentions(i) for i in desc.ids], [{world.KINDS[k] for k in s.objects} for s in scenes])
    assert result["recall"] > 0.8
    assert result["CHAIR_i"] < 0.2
    assert any(text.decode(i).startswith("there is a") for i in desc.ids)


def test_model_shows_the_co_occurrence_hallucination_the_benchmark_measures(model):
    scenes = world.decorrelated_scenes(np.random.default_rng(77_777), 12)
    desc = describe(model, scenes)
    # The missing partner is named far more often than any other absent kind.
    assert partner_rate(desc, scenes) > other_absent_rate(desc, scenes) + 0.15


def test_training_script_is_reproducible(tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from train_tiny_vlm import train

    args = argparse.Namespace(steps=2, batch_size=4, lr=1e-3, warmup=2, seed=11, threads=1, p_hidden=world.P_HIDDEN)
    first, second = train(args)["model"].state_dict(), train(args)["model"].state_dict()
    assert all(torch.equal(first[name], second[name]) for name in first)
    args.seed = 12
    third = train(args)["model"].state_dict()
    assert not all(torch.equal(first[name], third[name]) for name in first)


# -- the benchmark script ----------------------------------------------------------------------------
def test_auroc_is_the_rank_sum_statistic():
    rng = np.random.default_rng(5)
    positive, negative = list(rng.normal(1, 1, 40).round(1)), list(rng.normal(0, 1, 60).round(1))  # rounded: ties
    values = np.array(positive + negative)
    ranks = np.array([np.mean(np.flatnonzero(np.sort(values) == v)) + 1 for v in values])  # average ranks
    u = ranks[: len(positive)].sum() - len(positive) * (len(positive) + 1) / 2
    assert metrics.auroc(positive, negative) == pytest.approx(u / (len(positive) * len(negative)))
    assert metrics.auroc([1.0], [0.0]) == 1.0 and metrics.auroc([0.0], [1.0]) == 0.0
    assert np.isnan(metrics.auroc([], [1.0]))


def test_average_precision_is_the_mean_precision_at_each_positive():
    positive, negative = [0.9, 0.6, 0.3], [0.8, 0.5, 0.1, 0.6]
    # ranks of the positives among all, ties counting against: 0.9 -> 1/1; 0.6 -> 2/4 (0.9, 0.8, 0.6, 0.6); 0.3 -> 3/6
    assert metrics.average_precision(positive, negative) == pytest.approx((1 + 2 / 4 + 3 / 6) / 3)
    assert metrics.average_precision([1.0, 2.0], []) == 1.0 and np.isnan(metrics.average_precision([], [1.0]))


def test_the_quick_benchmark_fills_every_table(tmp_path):
    """``hallucination.py --quick`` (what the docs' figures come from, on small sets) in two
    worker processes: every table is written, the numbers hang together."""
    import json
    import subprocess

    root = Path(__file__).resolve().parents[1]
    markdown, numbers = tmp_path / "quick.md", tmp_path / "quick.json"
    command = [sys.executable, str(root / "benchmarks" / "hallucination.py"), "--quick", "--workers", "2",
               "--markdown", str(markdown), "--json", str(numbers)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report, result = markdown.read_text(), json.loads(numbers.read_text())
    for heading in ("### Side by side", "### VAG-DPO variants", "### Positive control, premise",
                    *(f"### Positive control, remedy: {kind}" for kind in ("flatten", "border", "sink", "decay")),
                    "### Which signal sees the hallucination", "### Early warning"):  # fmt: skip
        assert heading in report
    rows = result["rows"]
    for name in ("plain model", "guard (paper defaults)", "guard, mass gate (τ 0.8)", "PAI (α 0.2)", "PAI + CFG (α 0.2, γ 1.1)",
                 "VCD (α 1, β 0.1)", "guard + VCD (α 1)", "VAG-DPO", "VE background: mean colour",
                 "ordinary DPO (original image both sides)", f"VAG-DPO + {result['best_inference']}"):  # fmt: skip
        assert name in rows and 0 <= rows[name][0]["adv CHAIR_i"] <= 1, name
    assert rows["plain model"][0]["cost"] == 1.0
    (drifted,) = [d for d in result["drift"] if d["kind"] == "decay"]
    assert drifted["premise"]["6.0"]["adv recall"] < rows["plain model"][0]["adv recall"]  # decay hides objects
    assert len(drifted["remedy"]["6.0"]) == 6
    quality = result["warning"]["quality"]["0"]
    assert 0.5 < quality["AUROC risk (combined)"] <= 1 and 0 <= quality["hallucinations flagged"] <= 1
    for aurocs in result["auroc"]["0"].values():
        assert all(0 <= aurocs[name] <= 1 for name in aurocs if not name.startswith("n ")) and aurocs["n correct"] > 0
