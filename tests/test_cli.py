"""The adapt-hooks command through its real entry point (a subprocess), bad input included."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import torch
from PIL import Image

from adapt_hooks.viz import report
from adapt_hooks.tiny import tiny_model
from adapt_hooks.tiny.llava import demo_image, processor


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "adapt_hooks", *map(str, args)], capture_output=True, text=True,
                          timeout=300, cwd=cwd)


def _table_rows(stdout):
    return [line for line in stdout.splitlines() if re.match(r"\s+\d+\s", line)]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny LLaVA checkpoint folder with its processor, as save_pretrained writes it."""
    folder = tmp_path_factory.mktemp("tiny-llava")
    tiny_model("llava", "sdpa").save_pretrained(folder)
    processor().save_pretrained(folder)
    demo_image(3).save(folder / "scene.png")
    return folder


def test_run_on_a_checkpoint_folder(checkpoint, tmp_path):
    result = cli("run", "--model", checkpoint, "--image", checkpoint / "scene.png", "--prompt", "what is in the image",
                 "--max-new-tokens", "8", "--out", tmp_path)
    assert result.returncode == 0, result.stderr
    assert len(_table_rows(result.stdout)) == 7
    assert (tmp_path / "ve.png").is_file()
    observed = cli("run", "--model", checkpoint, "--image", checkpoint / "scene.png", "--prompt", "describe the image",
                   "--no-steer", "--out", tmp_path)
    assert observed.returncode == 0 and "answer (observed only):" in observed.stdout


def test_run_prints_each_tokens_risk_and_refuses_a_foreign_risk_model(checkpoint, tmp_path):
    from adapt_hooks import RiskModel

    weights = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 1.0])
    RiskModel(weights, -0.5, model_type="llava", n_layers=4).save(tmp_path / "risk.safetensors")  # risk = sigmoid(confidence - 0.5)
    result = cli("run", "--model", checkpoint, "--image", checkpoint / "scene.png", "--prompt", "what is in the image",
                 "--max-new-tokens", "6", "--no-steer", "--risk", tmp_path / "risk.safetensors", "--out", tmp_path)
    assert result.returncode == 0, result.stderr
    header = next(line for line in result.stdout.splitlines() if line.strip().startswith("step"))
    assert header.split()[:6] == ["step", "token", "visual", "mass", "AMC", "risk"]
    rows = _table_rows(result.stdout)
    assert len(rows) == 5
    risks = [float(row.split()[4]) for row in rows]  # step, token, mass, AMC, risk, steered
    assert all(0.37 < r < 0.63 for r in risks)  # sigmoid(p - 0.5) for a top probability p in [0, 1]
    RiskModel(weights, model_type="qwen2_vl", n_layers=4).save(tmp_path / "other.safetensors")
    foreign = cli("run", "--model", checkpoint, "--image", checkpoint / "scene.png", "--prompt", "x",
                  "--risk", tmp_path / "other.safetensors", "--out", tmp_path)
    assert foreign.returncode == 2 and "fitted for qwen2_vl" in foreign.stderr


def test_debias_command_writes_a_mask(checkpoint, tmp_path):
    from adapt_hooks import DebiasMask

    result = cli("debias", "--model", checkpoint, "--out", tmp_path / "mask.safetensors", "--n", "2")
    assert result.returncode == 0, result.stderr
    mask = DebiasMask.load(tmp_path / "mask.safetensors")
    assert set(mask.masks) == {(8, 8)} and mask.meta["n"] == 2


def test_bad_input_is_one_line_and_exit_2(checkpoint, tmp_path):
    text_file = tmp_path / "notes.txt"
    text_file.write_text("not an image")
    cases = [
        (["run", "--model", checkpoint, "--image", tmp_path / "missing.png", "--prompt", "x"], "no such file"),
        (["run", "--model", checkpoint, "--image", text_file, "--prompt", "x"], "not a readable image"),
        (["run", "--model", tmp_path / "nowhere", "--image", checkpoint / "scene.png", "--prompt", "x"], "cannot load --model"),
        (["debias", "--model", checkpoint, "--out", tmp_path / "m.safetensors", "--device", "cuda"], "no CUDA GPU"),
        (["demo", "--max-new-tokens", "0"], "--max-new-tokens must be at least 1"),
        (["run", "--model", tmp_path / "nowhere", "--image", checkpoint / "scene.png", "--prompt", "x",
          "--max-new-tokens", "0"], "--max-new-tokens must be at least 1"),
        (["demo", "--tau", "-1"], "DriftMonitor(tau=...) must be >= 0"),
        (["demo", "--max-new-tokens", "1", "--out", tmp_path], "the guard observed no decode step (generated 1 token"),
        (["run", "--model", checkpoint, "--image", checkpoint / "scene.png", "--prompt", "x", "--max-new-tokens", "1",
          "--out", tmp_path], "the guard observed no decode step"),
    ]
    if torch.cuda.is_available():
        cases.pop(3)
    for args, message in cases:
        result = cli(*args)
        assert result.returncode == 2, (args, result.stderr)
        lines = [line for line in result.stderr.strip().splitlines() if not line.startswith("Loading weights")]
        assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.stderr, result.stderr


def test_unsupported_model_is_named(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from adapt_hooks.tiny.llava import processor as tiny_processor

    folder = tmp_path / "llama"
    LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2)).save_pretrained(folder)
    tiny_processor().save_pretrained(folder)
    demo_image().save(tmp_path / "scene.png")
    result = cli("run", "--model", folder, "--image", tmp_path / "scene.png", "--prompt", "x")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "llama" in result.stderr.lower()


def test_check_reports_every_internal_and_exits_0():
    from adapt_hooks import compat

    result = cli("check")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.strip().splitlines()
    assert f"transformers {compat.INSTALLED}" in lines[0]
    checks = [line.split(":")[0].split(None, 1)[1] for line in lines[1:]]
    assert checks == ["release", "cache keyword", "prefill images", "attention call", "mask interface",
                      "eager attention", "reorder_cache"]
    assert all(line.startswith("ok") for line in lines[1:])


def test_check_exits_1_naming_what_changed(monkeypatch, capsys):
    from adapt_hooks import canary, cli as command

    monkeypatch.setattr(canary, "run", lambda: [canary.Finding("release", True, "fine"),
                                                canary.Finding("cache keyword", False, "passed as kv=, not cache=")])
    assert command.main(["check"]) == 1
    out, err = capsys.readouterr()
    assert "FAIL  cache keyword: passed as kv=, not cache=" in out
    assert len(err.strip().splitlines()) == 1 and "1 of 2 checks failed" in err


@pytest.mark.parametrize("command", [[], ["demo"], ["run"], ["debias"], ["check"], ["coverage"]])
def test_help_on_every_command(command):
    result = cli(*command, "--help")
    assert result.returncode == 0 and "usage: adapt-hooks" in result.stdout


def test_pictures_without_matplotlib(monkeypatch, tmp_path):
    import adapt_hooks
    from adapt_hooks import DriftMonitor

    model = tiny_model("llava", "sdpa")
    proc = processor()
    image = demo_image()
    inputs = proc(images=image, text="user : <image> what is in the image assistant :", return_tensors="pt")
    with adapt_hooks.guard(model, monitor=DriftMonitor(steer=False)) as run:
        model.generate(**inputs, max_new_tokens=8, do_sample=False)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails
    said = []
    written = report.write_pictures(run, image, tmp_path, say=said.append)
    assert [p.name for p in written] == ["anchor.png", "ve.png"] and said == [report.PLOT_HINT]


def test_pictures_keep_the_aspect_and_place_the_anchor_on_the_processors_crop(tmp_path):
    """A 96x48 image through CLIP's resize-then-centre-crop: the model sees the middle 48x48, so
    the anchor covers that square only (the VE image is white outside it: no anchor weight there),
    and the pictures keep the image's aspect."""
    import adapt_hooks
    from PIL import Image

    from adapt_hooks import DriftMonitor

    model, proc = tiny_model("llava", "sdpa"), processor()
    wide = Image.new("RGB", (96, 48), (30, 60, 90))
    assert report.processor_box(proc, wide) == (24, 0, 72, 48)
    assert report.processor_box(proc, Image.new("RGB", (48, 48))) == (0, 0, 48, 48)
    inputs = proc(images=wide, text="user : <image> what is in the image assistant :", return_tensors="pt")
    with adapt_hooks.guard(model, monitor=DriftMonitor(tau=1.0)) as run:
        model.generate(**inputs, max_new_tokens=8, do_sample=False)
    written = report.write_pictures(run, wide, tmp_path, box=report.processor_box(proc, wide), tau=1.0, title="tiny: K 5, τ 1")
    assert [p.name for p in written] == ["anchor.png", "ve.png", "overview.png", "drift.png"]
    ve = Image.open(tmp_path / "ve.png")
    assert ve.size == (288, 144)  # the aspect kept
    outside = [ve.getpixel((x, y)) for x in (*range(0, 72, 8), *range(216, 288, 8)) for y in range(0, 144, 8)]
    inside = [ve.getpixel((x, y)) for x in range(72, 216, 8) for y in range(0, 144, 8)]
    assert set(outside) == {(255, 255, 255)}  # the cropped-away sides carry no anchor
    assert (30, 60, 90) in inside or any(pixel != (255, 255, 255) for pixel in inside)  # the image shows through the crop
