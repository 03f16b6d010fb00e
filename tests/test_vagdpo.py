"""VAG-DPO: the loss against independent formulas, sequence log-probs against a per-token loop,
training on a tiny VLM (gradients, one step, images that matter, PEFT reference, checkpointing),
pair construction and the collator."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from PIL import Image

from adapt_hooks import VAGDPOCollator, VAGDPOLoss, dpo_loss, make_vagdpo_pair, reference_logps, sequence_logps
from adapt_hooks.noise import add_noise, cumulative_alpha
from adapt_hooks.tiny import tiny_model
from adapt_hooks.tiny.llava import processor


def _logps(seed=0, n=6):
    g = torch.Generator().manual_seed(seed)
    return [-(torch.rand(n, generator=g) * 20) for _ in range(4)]


def _reference_loss(pc, pr, rc, rr, beta, loss_type, ls):
    out = []
    for a, b, c, d in zip(pc.tolist(), pr.tolist(), rc.tolist(), rr.tolist()):
        h = (a - c) - (b - d)
        if loss_type == "sigmoid":
            sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
            out.append(-(1 - ls) * math.log(sig(beta * h)) - ls * math.log(sig(-beta * h)))
        elif loss_type == "ipo":
            out.append((h - 1 / (2 * beta)) ** 2)
        else:
            out.append(max(0.0, 1 - beta * h))
    return sum(out) / len(out)


@pytest.mark.parametrize("loss_type, ls", [("sigmoid", 0.0), ("sigmoid", 0.2), ("ipo", 0.0), ("hinge", 0.0)])
@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_loss_matches_independent_formula(loss_type, ls, beta):
    pc, pr, rc, rr = _logps()
    loss, metrics = VAGDPOLoss(beta=beta, loss_type=loss_type, label_smoothing=ls)(pc, pr, rc, rr)
    assert loss.item() == pytest.approx(_reference_loss(pc, pr, rc, rr, beta, loss_type, ls), rel=1e-5)
    chosen, rejected = beta * (pc - rc), beta * (pr - rr)
    assert metrics["rewards/chosen"].item() == pytest.approx(chosen.mean().item(), rel=1e-5)
    assert metrics["rewards/margins"].item() == pytest.approx((chosen - rejected).mean().item(), rel=1e-5, abs=1e-6)
    assert metrics["rewards/accuracies"].item() == pytest.approx((chosen > rejected).float().mean().item())


def test_sft_term_and_settings():
    pc, pr, rc, rr = _logps(1)
    nll = torch.tensor([2.0, 3.0, 1.0, 0.5, 0.5, 1.0])
    base, _ = VAGDPOLoss()(pc, pr, rc, rr)
    with_sft, _ = VAGDPOLoss(sft_weight=0.5)(pc, pr, rc, rr, chosen_nll=nll)
    assert with_sft.item() == pytest.approx(base.item() + 0.5 * nll.mean().item())
    with pytest.raises(ValueError, match="needs chosen_nll"):
        VAGDPOLoss(sft_weight=1.0)(pc, pr, rc, rr)
    for bad in (dict(beta=0), dict(loss_type="kto"), dict(label_smoothing=0.5), dict(sft_weight=-1)):
        with pytest.raises(ValueError):
            VAGDPOLoss(**bad)
    with pytest.raises(ValueError, match=r"dpo_loss\(beta=...\)"):  # the functional form checks it too
        dpo_loss(pc, pr, rc, rr, beta=0.0, loss_type="ipo")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_loss_is_float32_and_finite_for_half_inputs(dtype):
    pc, pr, rc, rr = (t.to(dtype) * 50 for t in _logps(2))  # large magnitudes
    loss, metrics = VAGDPOLoss()(pc, pr, rc, rr)
    assert loss.dtype == torch.float32 and loss.isfinite()
    assert all(v.isfinite() for v in metrics.values())


# -- on a tiny VLM --------------------------------------------------------------------------
QUESTIONS = ["what is in the image", "describe the image"]


def _image(colour):
    image = Image.new("RGB", (48, 48), (20, 20, 20))
    image.paste(colour, (8, 8, 30, 30))
    return image


@pytest.fixture(scope="module")
def setup():
    model = tiny_model("llava", "eager")
    proc = processor()
    grid = torch.zeros(8, 8)
    grid[1:4, 1:4] = 1.0
    records = [
        dict(image=_image((230, 40, 40)), question=QUESTIONS[0], chosen="the image .", rejected="what is in", anchor=grid),
        dict(image=_image((40, 40, 230)), question=QUESTIONS[1], chosen="image .", rejected="the user : assistant", anchor=grid),
    ]
    return model, proc, records, VAGDPOCollator(proc, seed=3)(records)


def test_collator_builds_the_four_way_batch(setup):
    model, proc, records, batch = setup
    assert batch["input_ids"].shape[0] == 4 and batch["pixel_values"].shape[0] == 4
    for b, answer in enumerate([r["chosen"] for r in records] + [r["rejected"] for r in records]):
        expected = proc.tokenizer(answer, add_special_tokens=False)["input_ids"] + [proc.tokenizer.eos_token_id]
        assert batch["input_ids"][b][batch["response_mask"][b]].tolist() == expected
        assert (batch["input_ids"][b] == 3).sum() == 64  # the prompt keeps its image tokens
    ve, blind = make_vagdpo_pair(records[0]["image"], records[0]["anchor"], seed=3)
    assert torch.allclose(batch["pixel_values"][0], proc(images=ve, text="<image>", return_tensors="pt")["pixel_values"][0])
    assert not torch.allclose(batch["pixel_values"][0], batch["pixel_values"][2])


def test_collator_passes_the_background_and_noise_step_on(setup):
    _, proc, records, _ = setup
    batch = VAGDPOCollator(proc, seed=3, step=200, background="blur")(records)
    ve, blind = make_vagdpo_pair(records[1]["image"], records[1]["anchor"], seed=4, step=200, background="blur")
    encode = lambda image: proc(images=image, text="<image>", return_tensors="pt")["pixel_values"][0]  # noqa: E731
    assert torch.allclose(batch["pixel_values"][1], encode(ve)) and torch.allclose(batch["pixel_values"][3], encode(blind))
    white, _ = make_vagdpo_pair(records[1]["image"], records[1]["anchor"], seed=4)
    assert not torch.allclose(batch["pixel_values"][1], encode(white))
    with pytest.raises(ValueError, match="background="):
        VAGDPOCollator(proc, background="black")


def test_sequence_logps_match_a_per_token_loop(setup):
    model, _, _, batch = setup
    with torch.no_grad():
        got = sequence_logps(model, batch)
        logits = model(**{k: v for k, v in batch.items() if k != "response_mask"}).logits.double()
    expected = []
    for b in range(4):
        total = 0.0
        for t in range(1, batch["input_ids"].shape[1]):
            if batch["response_mask"][b, t]:
                total += torch.log_softmax(logits[b, t - 1], -1)[batch["input_ids"][b, t]].item()
        expected.append(total)
    torch.testing.assert_close(torch.cat([got.chosen, got.rejected]).double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-5, atol=1e-5)
    n_chosen = batch["response_mask"][:2, 1:].sum(-1)
    torch.testing.assert_close(got.chosen_nll, -got.chosen / n_chosen)


def _step_loss(policy, reference, batch, loss_fn):
    ref = reference_logps(reference, batch)
    pol = sequence_logps(policy, batch)
    return loss_fn(pol.chosen, pol.rejected, ref.chosen, ref.rejected, pol.chosen_nll)[0]


def test_one_optimiser_step_lowers_the_loss(setup):
    _, _, _, batch = setup
    policy = tiny_model("llava", "eager").train()
    reference = copy.deepcopy(policy).eval().requires_grad_(False)
    loss_fn = VAGDPOLoss(beta=0.5)
    loss = _step_loss(policy, reference, batch, loss_fn)
    assert loss.item() == pytest.approx(math.log(2), rel=1e-5)  # policy == reference
    loss.backward()
    grads = [p.grad for p in policy.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    vision_grad = policy.model.vision_tower.embeddings.patch_embedding.weight.grad
    assert vision_grad is not None and vision_grad.abs().sum() > 0  # the images are part of the signal
    torch.optim.SGD(policy.parameters(), lr=0.5).step()
    with torch.no_grad():
        assert _step_loss(policy, reference, batch, loss_fn).item() < loss.item()


def test_swapping_the_images_changes_the_loss(setup):
    model, _, _, batch = setup
    reference = tiny_model("llava", "eager", seed=1)
    loss_fn = VAGDPOLoss()
    swapped = dict(batch, pixel_values=torch.cat(batch["pixel_values"].chunk(2)[::-1]))
    with torch.no_grad():
        a = _step_loss(model, reference, batch, loss_fn)
        b = _step_loss(model, reference, swapped, loss_fn)
    assert abs(a.item() - b.item()) > 1e-4


def test_autocast_and_gradient_checkpointing(setup):
    _, _, _, batch = setup
    model = tiny_model("llava", "eager").train()
    plain = sequence_logps(model, batch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = sequence_logps(model, batch)
    assert low.chosen.dtype == torch.float32 and low.chosen.isfinite().all()
    torch.testing.assert_close(low.chosen, plain.chosen, rtol=0.05, atol=0.5)
    plain.chosen.sum().backward()
    expected = model.lm_head.weight.grad.clone()
    model.zero_grad()
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x
        model.activation_checkpointing_enable({"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    sequence_logps(model, batch).chosen.sum().backward()
    torch.testing.assert_close(model.lm_head.weight.grad, expected, rtol=1e-4, atol=1e-6)


def test_reference_from_a_peft_model_with_its_adapter_disabled(setup):
    peft = pytest.importorskip("peft")
    _, _, _, batch = setup
    base = tiny_model("llava", "eager")
    with torch.no_grad():
        original = sequence_logps(base, batch)
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    policy = peft.get_peft_model(base, config)
    with torch.no_grad():
        adapted = sequence_logps(policy, batch)
    ref = reference_logps(policy, batch, disable_adapter=True)
    torch.testing.assert_close(ref.chosen, original.chosen)
    assert (adapted.chosen - original.chosen).abs().max() > 1e-4
    with pytest.raises(ValueError, match="PEFT model"):
        reference_logps(tiny_model("llava", "eager"), batch, disable_adapter=True)


# -- pairs ----------------------------------------------------------------------------------
def test_noise_schedule_and_statistics():
    alpha = 1.0
    for s in range(500):
        alpha *= 1 - (1e-4 + (0.02 - 1e-4) * s / 999)
    assert cumulative_alpha(500) == pytest.approx(alpha, rel=1e-9)
    x = torch.full((200_000,), 0.4)
    noisy = add_noise(x, 500, torch.Generator().manual_seed(0))
    assert noisy.mean().item() == pytest.approx(alpha**0.5 * 0.4, abs=0.01)
    assert noisy.std().item() == pytest.approx((1 - alpha) ** 0.5, abs=0.01)


def test_pairs_are_seeded_and_anchor_shaped():
    image = _image((230, 40, 40))
    grid = torch.zeros(8, 8)
    grid[:, :4] = 1.0
    ve1, noise1 = make_vagdpo_pair(image, grid, seed=1)
    ve2, noise2 = make_vagdpo_pair(image, grid, seed=1)
    _, noise3 = make_vagdpo_pair(image, grid, seed=2)
    assert list(noise1.getdata()) == list(noise2.getdata()) != list(noise3.getdata())
    assert list(ve1.getdata()) == list(ve2.getdata())
    assert ve1.getpixel((2, 24)) == image.getpixel((2, 24)) and ve1.getpixel((45, 24)) == (255, 255, 255)
    with pytest.raises(ValueError, match="0..1000"):
        cumulative_alpha(1001)


def test_vagdpo_guide_code_runs(tmp_path):
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "vagdpo.md").read_text()
    loop, trainer_code = re.findall(r"```python\n(.*?)```", text, flags=re.S)[:2]  # the loop, the Trainer
    namespace: dict = {}
    exec(compile(loop, "vagdpo.md", "exec"), namespace)
    exec(compile("from adapt_hooks import *\n" + trainer_code, "vagdpo.md", "exec"), namespace)
    pytest.importorskip("accelerate")
    from transformers import TrainingArguments

    model = namespace["model"]
    args = TrainingArguments(str(tmp_path), per_device_train_batch_size=2, max_steps=2, remove_unused_columns=False,
                             report_to=[], use_cpu=True, save_strategy="no", logging_steps=1)
    trainer = namespace["VAGDPOTrainer"](model=model, args=args, train_dataset=[namespace["record"]] * 4,
                                         data_collator=namespace["collate"], reference=namespace["reference"])
    result = trainer.train()
    assert result.global_step == 2 and math.isfinite(result.training_loss)


def test_training_example_runs():
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, str(root / "examples" / "train_vagdpo.py"), "--steps", "3", "--lr", "5e-3"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    losses = [float(line.split()[3]) for line in result.stdout.splitlines() if line.startswith("step")]
    assert len(losses) == 2 and losses[0] == pytest.approx(math.log(2), rel=1e-4) and losses[-1] < losses[0]
