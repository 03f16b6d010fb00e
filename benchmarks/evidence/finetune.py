"""A short VAG-DPO fine-tune of the tiny model with the library's own pieces.

Preference data come from fresh scenes (seeded apart from every evaluation suite): decorrelated
scenes, plus training-distribution scenes as replay so that what needs no correction is kept. Per
scene a description pair (chosen: the true caption; rejected: the model's own caption when it
names an absent object, else the true caption with the missing partner — or, in a replay scene, a
random absent kind — inserted) and two yes/no pairs (that absent kind: chosen "no", rejected
"yes"; a present kind: chosen "yes", rejected "no"). The chosen side sees the anchor-enhanced (VE) image built from the model's own anchor
(:func:`adapt_hooks.compute_anchor` on the description prompt), the rejected side the
noise-injected image (:class:`adapt_hooks.VAGDPOCollator`).

``images="plain"`` is the ablation: the same pairs with the original image on both sides
(anchor of ones, noise step 0), i.e. ordinary DPO. ``background`` and ``noise_step`` are the
VAG-DPO variants: what the VE image shows outside the anchor and how noisy the rejected image is.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import numpy as np
import torch

from adapt_hooks import VAGDPOCollator, VAGDPOLoss, compute_anchor, reference_logps, sequence_logps

from adapt_hooks.shapes import text, world

from .evaluate import describe


@dataclass(frozen=True)
class DPOSettings:
    steps: int = 100
    batch_size: int = 16
    lr: float = 5e-5
    beta: float = 0.1
    sft_weight: float = 1.0  # NLL of the chosen answer, as VAGDPOLoss(sft_weight=...) adds it
    n_per_kind: int = 40
    n_replay: int = 160  # training-distribution scenes added to the pairs (rejected: an absent kind inserted)
    images: str = "vag"  # "vag": VE / noise images; "plain": the original image on both sides
    background: str = "white"  # the VE image outside the anchor: "white" (the method's), "mean", "blur"
    noise_step: int = 500  # diffusion step of the rejected image

    @property
    def records_key(self) -> tuple:
        """What the preference records depend on (variants differing only in images share them)."""
        return (self.n_per_kind, self.n_replay, self.images)


def preference_records(model, processor, seed: int, settings: DPOSettings) -> list[dict]:
    """Records ``{image, question, chosen, rejected, anchor}`` for :class:`VAGDPOCollator`."""
    rng = np.random.default_rng(20_000 + seed)
    scenes = world.decorrelated_scenes(rng, settings.n_per_kind) + world.training_scenes(rng, settings.n_replay)
    own = describe(model, scenes)
    prompt = VAGDPOCollator(processor).prompt(text.DESCRIBE)
    records = []
    for scene, ids in zip(scenes, own.ids):
        image = scene.image()
        if settings.images == "vag":
            inputs = processor(images=image, text=prompt, return_tensors="pt")
            anchor = compute_anchor(model, inputs).grid(0)
        else:
            anchor = torch.ones(text.GRID, text.GRID)
        absent = [k for k in range(world.N_KINDS) if k not in scene.objects]
        partner = world.missing_partner(scene)
        if partner is None:  # a training-distribution scene: any absent kind plays the hallucination
            partner = absent[int(rng.integers(len(absent)))]
        chosen = text.caption(scene.kinds)
        if text.mentioned_kinds(ids) - scene.objects or len(text.mentions(ids)) > len(text.mentioned_kinds(ids)):
            rejected = text.decode(ids)
        else:
            rejected = text.caption(set(scene.kinds) | {partner})
        present = scene.kinds[int(rng.integers(len(scene.kinds)))]
        records.append(dict(image=image, question=text.DESCRIBE, chosen=chosen, rejected=rejected, anchor=anchor))
        records.append(dict(image=image, question=text.question(partner), chosen="no", rejected="yes", anchor=anchor))
        records.append(dict(image=image, question=text.question(present), chosen="yes", rejected="no", anchor=anchor))
    return records


def vagdpo(model, processor, seed: int, settings: DPOSettings = DPOSettings(), log=print, records: list[dict] | None = None):
    """A fine-tuned copy of ``model`` (``model`` itself is left untouched) and a log dict;
    ``records`` reuses preference records built for the same seed and ``records_key``."""
    torch.manual_seed(seed)
    start = time.time()
    if records is None:
        records = preference_records(model.eval(), processor, seed, settings)
    prepared = time.time() - start
    reference = copy.deepcopy(model).eval().requires_grad_(False)
    policy = copy.deepcopy(model).train()
    vag = settings.images == "vag"
    collate = VAGDPOCollator(processor, seed=seed, step=settings.noise_step if vag else 0, background=settings.background)
    loss_fn = VAGDPOLoss(beta=settings.beta, sft_weight=settings.sft_weight)
    optimiser = torch.optim.AdamW(policy.parameters(), lr=settings.lr)
    rng = np.random.default_rng(30_000 + seed)
    history = []
    for step in range(1, settings.steps + 1):
        chosen = [records[i] for i in rng.choice(len(records), settings.batch_size, replace=False)]
        batch = collate(chosen)
        ref = reference_logps(reference, batch)
        pol = sequence_logps(policy, batch)
        loss, stats = loss_fn(pol.chosen, pol.rejected, ref.chosen, ref.rejected, pol.chosen_nll)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if step == 1 or step % 20 == 0 or step == settings.steps:
            row = dict(step=step, loss=loss.item(), margin=stats["rewards/margins"].item(), accuracy=stats["rewards/accuracies"].item())
            history.append(row)
            log(f"  dpo[{settings.images} seed {seed}] step {step:4d} loss {row['loss']:.4f} margin {row['margin']:+.3f} acc {row['accuracy']:.2f}")
    info = dict(records=len(records), prepare_seconds=prepared, train_seconds=time.time() - start - prepared, history=history)
    return policy.eval(), info
