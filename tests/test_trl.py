"""VAG-DPO through TRL: training a tiny VLM with VAGDPOTrainer (loss falls, weights change, TRL's
metrics), the rejected rows really seeing the noise image, TRL's loss equal to VAGDPOLoss on the
same batch, the three kinds of reference, and anchors computed in batches and cached."""

from __future__ import annotations

import random

import pytest
import torch
from PIL import Image

pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

from adapt_hooks import Anchor, VAGDPOLoss, compute_anchor, make_vagdpo_pair, reference_logps, sequence_logps  # noqa: E402
from adapt_hooks.prompts import chat_prompt  # noqa: E402
from adapt_hooks.noise import NOISE_STEP, noise_image  # noqa: E402
from adapt_hooks.tiny import tiny_model  # noqa: E402
from adapt_hooks.tiny.llava import processor as tiny_processor  # noqa: E402
from adapt_hooks.training.anchors import add_anchors, iter_anchors  # noqa: E402
from adapt_hooks.trl import DPOConfig, VAGDPOTrainer  # noqa: E402


def scenes(n: int = 8, seed: int = 0) -> list[dict]:
    """Coloured squares on dark backgrounds, with a right and a hallucinated answer."""
    rng, out = random.Random(seed), []
    for _ in range(n):
        image = Image.new("RGB", (48, 48), (20, 20, 20))
        x, y = rng.randrange(0, 24), rng.randrange(0, 24)
        image.paste((rng.randrange(256), rng.randrange(256), rng.randrange(256)), (x, y, x + 20, y + 20))
        out.append(dict(image=image, question="what is in the image", chosen="the image .", rejected="what user : assistant"))
    return out


def config(tmp_path, **overrides) -> DPOConfig:
    settings = dict(output_dir=str(tmp_path / "out"), max_steps=6, per_device_train_batch_size=2, learning_rate=1e-3,
                    logging_steps=1, report_to="none", use_cpu=True, gradient_checkpointing=False, save_strategy="no",
                    disable_tqdm=True, seed=0)  # fmt: skip
    return DPOConfig(**{**settings, **overrides})


def losses(trainer) -> list[float]:
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


def test_training_through_trl_lowers_the_loss_changes_the_weights_and_logs_trls_metrics(tmp_path):
    model, processor = tiny_model("llava"), tiny_processor()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainer = VAGDPOTrainer(model, args=config(tmp_path), train_dataset=datasets.Dataset.from_list(scenes()),
                            processing_class=processor, anchor_batch_size=4)  # fmt: skip
    trainer.train()
    curve = losses(trainer)
    assert len(curve) == 6 and curve[0] == pytest.approx(0.6931, abs=1e-3)  # policy == frozen copy at step 1
    assert curve[-1] < curve[0] - 0.05
    assert any(not torch.equal(before[name], p) for name, p in model.named_parameters())
    logged = trainer.state.log_history[-2]
    assert {"rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"} <= set(logged)
    assert logged["rewards/margins"] == pytest.approx(logged["rewards/chosen"] - logged["rewards/rejected"], abs=1e-4)


def test_the_rejected_rows_see_the_noise_image_and_the_chosen_rows_the_anchor_enhanced_one(tmp_path):
    model, processor = tiny_model("llava"), tiny_processor()
    record = scenes(1)[0]
    dataset = datasets.Dataset.from_list([record] * 4)  # one record: the seed does not depend on the order
    trainer = VAGDPOTrainer(model, args=config(tmp_path, max_steps=1, precompute_ref_log_probs=True),
                            train_dataset=dataset, processing_class=processor)  # fmt: skip
    seen = []
    handle = model.register_forward_pre_hook(lambda m, a, kw: seen.append(kw.get("pixel_values")), with_kwargs=True)
    try:
        trainer.train()
    finally:
        handle.remove()
    pixels = seen[-1]  # the training step's forward: 2 chosen rows, then 2 rejected rows
    collator = trainer.data_collator.collator
    anchor = torch.tensor(trainer.train_dataset[0]["anchor"])
    seed = collator.noise_seed(record, 0)
    blind = noise_image(record["image"], NOISE_STEP, torch.Generator().manual_seed(seed))
    ve = make_vagdpo_pair(record["image"], anchor, seed=seed)[0]
    expect = lambda image: processor.image_processor(image, return_tensors="pt")["pixel_values"][0]  # noqa: E731
    assert torch.allclose(pixels[2], expect(blind)) and torch.allclose(pixels[3], expect(blind))
    assert torch.allclose(pixels[0], expect(ve)) and not torch.allclose(pixels[2], expect(record["image"]), atol=0.1)


def test_trls_loss_on_a_batch_is_vagdpo_loss(tmp_path):
    model, processor = tiny_model("llava"), tiny_processor()
    trainer = VAGDPOTrainer(model, args=config(tmp_path, beta=0.3), train_dataset=datasets.Dataset.from_list(scenes(4)),
                            processing_class=processor)  # fmt: skip
    trainer.train()  # move the policy away from the reference
    records = [dict(r) for r in trainer.train_dataset.select(range(2))]
    batch = trainer.data_collator(records)
    with torch.no_grad():
        trl_loss = trainer.compute_loss(model, dict(batch))
    ours = {k: v for k, v in batch.items() if k != "completion_mask"} | {"response_mask": batch["completion_mask"].bool()}
    with torch.no_grad():
        policy, ref = sequence_logps(model, ours), reference_logps(trainer.ref_model, ours)
    loss, _ = VAGDPOLoss(beta=0.3)(policy.chosen, policy.rejected, ref.chosen, ref.rejected)
    assert abs(loss.item() - 0.6931) > 1e-3 and trl_loss.item() == pytest.approx(loss.item(), abs=1e-5)


@pytest.mark.parametrize("reference", ["peft", "precomputed"])
def test_trls_references_start_at_the_policy(tmp_path, reference):
    """A LoRA adapter disabled, or log-probs computed before training on the same (fixed) noise:
    at step 1 the policy is its reference, so the loss is exactly log 2; then it falls."""
    model, processor = tiny_model("llava"), tiny_processor()
    options = {}
    if reference == "peft":
        from peft import LoraConfig

        options["peft_config"] = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"])
    args = config(tmp_path, precompute_ref_log_probs=reference == "precomputed", learning_rate=5e-3)
    trainer = VAGDPOTrainer(model, args=args, train_dataset=datasets.Dataset.from_list(scenes()), processing_class=processor, **options)
    assert trainer.ref_model is None
    trainer.train()
    curve = losses(trainer)
    assert curve[0] == pytest.approx(0.6931, abs=1e-4) and curve[-1] < curve[0]


def test_the_trainer_refuses_what_it_cannot_train_on(tmp_path):
    model, processor = tiny_model("llava"), tiny_processor()
    with pytest.raises(TypeError, match="takes a datasets.Dataset.*Dataset.from_list"):
        VAGDPOTrainer(model, args=config(tmp_path), train_dataset=scenes(2), processing_class=processor)
    with pytest.raises(ValueError, match="needs processing_class"):
        VAGDPOTrainer(model, args=config(tmp_path), train_dataset=datasets.Dataset.from_list(scenes(2)))


def test_anchors_in_batches_match_one_at_a_time_and_are_cached(tmp_path, monkeypatch):
    model, processor = tiny_model("llava"), tiny_processor()
    records = scenes(5)
    images, questions = [r["image"] for r in records], [r["question"] for r in records]
    batched = list(iter_anchors(model, processor, images, questions, batch_size=2, cache_dir=tmp_path, progress=False))
    for grid, record in zip(batched, records):
        inputs = processor(images=record["image"], text=chat_prompt(processor, record["question"]), return_tensors="pt")
        assert torch.allclose(grid, compute_anchor(model, inputs).grid(0, 0), atol=1e-3)  # padding: float noise only
    assert len(list(tmp_path.glob("anchors-*.safetensors"))) == 3  # 2 + 2 + 1 records
    monkeypatch.setattr(model, "generate", lambda *a, **k: pytest.fail("the cache was not used"))
    again = list(iter_anchors(model, processor, images, questions, batch_size=2, cache_dir=tmp_path, progress=False))
    assert all(torch.equal(a, b) for a, b in zip(again, batched))
    with pytest.raises(ValueError, match="other settings"):
        list(iter_anchors(model, processor, images, questions, batch_size=2, cache_dir=tmp_path, anchor=Anchor(k=3), progress=False))
    monkeypatch.undo()
    column = add_anchors(datasets.Dataset.from_list(records), model, processor, batch_size=2)["anchor"]
    assert all(torch.allclose(torch.tensor(c), b) for c, b in zip(column, batched))
