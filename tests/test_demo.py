"""``adapt-hooks demo`` on the shipped shapes VLM: the scene it picks, the caption and risk it
prints, the comparison and the pictures, each checked against an independent computation."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from adapt_hooks import Anchor, DriftMonitor
from adapt_hooks.running import guarded_generate
from adapt_hooks.shapes import demo, text, world
from adapt_hooks.shapes.model import RISK_FILE, WEIGHTS_DIR, load_model, load_processor, load_risk
from adapt_hooks.tiny import tiny_model

from .test_cli import cli


@pytest.fixture(scope="module")
def shapes():
    return load_model(attn_implementation="sdpa"), load_processor()


def _caption(model, processor, scene, max_new_tokens=24) -> list[int]:
    """The plain greedy caption of one scene, without any guard."""
    inputs = processor(images=[scene.image()], text=[f"<image> {text.DESCRIBE}"], return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return text.trim(out[0, inputs["input_ids"].shape[1] :].tolist())


def test_the_demo_picks_the_first_scene_whose_plain_caption_names_an_absent_object(shapes):
    model, processor = shapes
    scenes, index = demo.pick_scene(model, processor, seed=0, max_new_tokens=24)
    assert index is not None and len(scenes) == len(world.PARTNER_OF) * demo.SCENES_PER_KIND
    for j, scene in enumerate(scenes[: index + 1]):  # one at a time, unbatched
        named = text.mentioned_kinds(_caption(model, processor, scene))
        assert bool(named - scene.objects) == (j == index), (j, named, scene.kinds)


def test_demo_prints_the_caught_hallucination_the_methods_and_writes_pictures(shapes, tmp_path):
    result = cli("demo", "--out", tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    index, total = map(int, re.search(r"Scene (\d+) of (\d+) \(seed 0\)", out).groups())
    scene = world.decorrelated_scenes(np.random.default_rng(0), demo.SCENES_PER_KIND)[index - 1]
    shown = re.search(r"shows: (.*)\.\n", out).group(1).split(", ")
    assert sorted(shown) == sorted(world.kind_name(k) for k in scene.kinds) and total == 32
    # The printed plain answer is the unguarded model's own caption, and it names an absent object.
    model, processor = shapes
    ids = _caption(model, processor, scene)
    answer = out.split("the plain model answers:\n")[1].splitlines()[0].strip()
    assert answer == text.decode(ids)
    absent = {j: kind for j, kind in text.mention_steps(ids) if kind not in scene.objects}
    assert absent and f"names a {world.kind_name(next(iter(absent.values())))}, which is not in the picture" in out
    # Word by word: one row per decode step (the words after the prefill's, then </s>), the
    # absent objects' colour words marked, "!" exactly where the risk passes the printed threshold.
    threshold = float(re.search(r"above its threshold ([0-9.]+)", out).group(1))
    rows = [line for line in out.splitlines() if re.match(r"\s+\d+\s", line)]
    words = [text.VOCAB[i] for i in ids] + ["</s>"]
    assert [row.split()[1] for row in rows] == words[1:]
    for step, row in enumerate(rows, start=1):
        risk = row.split()[4]  # step, token, visual mass, AMC, risk, steered layers
        value, flagged = float(risk.rstrip("!")), risk.endswith("!")
        assert 0 <= value <= 1
        if abs(value - threshold) > 1e-3:  # both printed to 3 decimals
            assert flagged == (value > threshold), row
        assert ("not in the picture" in row) == (step in absent)
    assert re.search(r"The risk (first passed|did not pass)", out)
    for name in ("plain", "guard (ADAPT, tau 0.6)", "VCD (alpha 1)"):
        assert re.search(rf"^  {re.escape(name)}\s+there is", out, re.M), name
    # Pictures: the scene as the model saw it, upscaled; the anchor over it; the VE image; the plot.
    picture = np.asarray(Image.open(tmp_path / "scene.png"))
    assert picture.shape == (288, 288, 3) and np.array_equal(picture[::6, ::6], scene.pixels)
    for name in ("anchor.png", "ve.png", "overview.png", "drift.png"):
        assert Image.open(tmp_path / name).size[0] >= 288, name
    # The docs' pictures are this command's output (`adapt-hooks demo --out docs/images`), not hand-made.
    docs = Path(__file__).resolve().parents[1] / "docs" / "images"
    for name in ("scene.png", "anchor.png", "ve.png"):  # the same pixels, up to float rounding on another CPU
        shipped, made = (np.asarray(Image.open(folder / name)).astype(int) for folder in (docs, tmp_path))
        assert shipped.shape == made.shape, f"docs/images/{name} is stale"
        differs = np.abs(shipped - made)
        assert differs.max() <= 2 and (differs > 0).mean() < 0.01, f"docs/images/{name} is stale"
    for name in ("overview.png", "drift.png"):  # matplotlib's rendering may differ by version: the same size
        assert Image.open(docs / name).size == Image.open(tmp_path / name).size, f"docs/images/{name} is stale"


def test_the_observed_demo_run_is_the_plain_model(shapes):
    """The demo's word-by-word run is observe-only: its tokens are the unguarded model's."""
    model, processor = shapes
    scenes, index = demo.pick_scene(model, processor, seed=1, max_new_tokens=24)
    inputs = demo._inputs(processor, [scenes[index]])
    risk = load_risk(model)
    ids, run = guarded_generate(model, inputs, 24, DriftMonitor(steer=False, risk=risk), Anchor(k=5))
    assert text.trim(ids[0].tolist()) == _caption(model, processor, scenes[index])
    assert run.monitor.risk.shape == (ids.shape[1] - 1, 1)


def test_the_shipped_risk_model_is_fitted_for_the_shipped_model_only(shapes):
    model, _ = shapes
    risk = load_risk(model)
    assert 0 < risk.meta["threshold"] < 1 and risk.meta["positives"] > 0
    with pytest.raises(ValueError, match="fitted for llava with 4 decoder layers of width 128"):
        load_risk(tiny_model("llava"))


def test_the_wheel_ships_the_weights():
    """pyproject's package data covers every file of the weights folder (a wheel built from it ships them)."""
    config = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["adapt_hooks.shapes"]
    files = sorted(p.name for p in WEIGHTS_DIR.iterdir())
    assert {"model.safetensors", "processor_config.json", "tokenizer.json", RISK_FILE.name} <= set(files)
    assert all(any(Path("weights", f).match(p) for p in patterns) for f in files)


def test_the_readme_first_example_prints_what_the_readme_shows(capsys):
    """The README opens with the shipped model catching its hallucination; its printed output is
    the one the README shows under it."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    found = re.search(r"```python\n(.*?)```\n\n```text\n(.*?)```", readme, re.S)
    assert found and found.start() == readme.index("```python") and "load_risk" in found.group(1), "the first example shows the risk"
    exec(compile(found.group(1), "README.md", "exec"), {})
    assert capsys.readouterr().out.strip() == found.group(2).strip()
