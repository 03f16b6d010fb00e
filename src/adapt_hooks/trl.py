"""VAG-DPO in TRL: :class:`VAGDPOTrainer` is TRL's ``DPOTrainer`` whose chosen rows see the
anchor-enhanced image and whose rejected rows see the noise-injected one. TRL keeps everything
else: its DPO loss (``loss_type="sigmoid"`` is exactly :class:`adapt_hooks.VAGDPOLoss`), the
reference (a ``ref_model``, a PEFT model's disabled adapter, or ``precompute_ref_log_probs``), its
metrics (``rewards/chosen``, ``rewards/rejected``, ``rewards/margins``, ``rewards/accuracies``...)
and logging, accelerate (DDP, FSDP, DeepSpeed). Needs ``pip install "adapt-hooks[trl]"``.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .anchor import Anchor
from .noise import NOISE_STEP
from .training.anchors import add_anchors
from .training.pairs import VAGDPOCollator

try:
    from trl import DPOConfig, DPOTrainer
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError('adapt_hooks.trl needs TRL: pip install "adapt-hooks[trl]"') from error

__all__ = ["DPOConfig", "VAGDPOTrainer", "TRLCollator"]

#: Dataset columns the trainer reads (TRL would drop the others with remove_unused_columns).
COLUMNS = ("image", "prompt", "question", "chosen", "rejected", "anchor", "ref_chosen_logps", "ref_rejected_logps")


class TRLCollator:
    """A :class:`VAGDPOCollator` speaking TRL's batch format: ``completion_mask`` marks the answers
    of the ``[chosen; rejected]`` rows, and precomputed reference log-probs ride along."""

    def __init__(self, collator: VAGDPOCollator) -> None:
        self.collator = collator

    def __call__(self, records: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        batch = self.collator(records)
        batch["completion_mask"] = batch.pop("response_mask").long()
        for name in ("ref_chosen_logps", "ref_rejected_logps"):
            if name in records[0]:
                batch[name] = torch.tensor([float(r[name]) for r in records])
        return batch


class VAGDPOTrainer(DPOTrainer):
    """TRL's ``DPOTrainer`` on image preference records ``{image, question or prompt, chosen,
    rejected[, anchor]}`` (a ``datasets.Dataset``), with VAG-DPO's per-side images.

    Records without an ``anchor`` column get one before training, from ``model`` as it is then
    (:func:`adapt_hooks.training.anchors.add_anchors`: ``anchor_batch_size`` records per
    ``generate``, cached in ``anchor_cache``). The reference is ``ref_model`` when given; else
    TRL's: the PEFT model with its adapter disabled, the precomputed log-probs (below), or else a
    frozen copy of ``model`` made here (TRL would load one from the Hub by the model's
    name, which a model built from a config does not have).

    Precomputed reference log-probs (``args.precompute_ref_log_probs``, or the dataset's own
    ``ref_chosen_logps`` / ``ref_rejected_logps`` columns) come from one pass before training with
    the rejected images' noise fixed per record, so the training steps see the same noise; TRL
    refuses that for image datasets, so this trainer does the pass itself (on a frozen copy freed
    before the first step, or the PEFT model with its adapter disabled).
    """

    def __init__(
        self,
        model: nn.Module,
        ref_model: nn.Module | None = None,
        args: DPOConfig | None = None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        *,
        anchor: Anchor | None = None,
        anchor_batch_size: int = 8,
        anchor_cache: str | os.PathLike | None = None,
        noise_step: int = NOISE_STEP,
        background: str = "white",
        peft_config=None,
        **kwargs,
    ) -> None:
        if processing_class is None:
            raise ValueError("VAGDPOTrainer needs processing_class=<the model's processor> (it renders both images).")
        if isinstance(model, str):
            raise TypeError("VAGDPOTrainer takes a loaded model (its anchors are computed before training), not a name.")
        args = args if args is not None else DPOConfig(output_dir="vagdpo")
        if train_dataset is None:
            raise ValueError("VAGDPOTrainer needs a train_dataset (a datasets.Dataset of image preference records).")
        train_dataset = self._with_anchors(train_dataset, model, processing_class, anchor, anchor_batch_size, anchor_cache)
        if eval_dataset is not None:
            eval_dataset = self._with_anchors(eval_dataset, model, processing_class, anchor, anchor_batch_size,
                                              None if anchor_cache is None else f"{anchor_cache}/eval")  # fmt: skip
        peft = peft_config is not None or hasattr(model, "disable_adapter")
        given = {"ref_chosen_logps", "ref_rejected_logps"} <= set(train_dataset.column_names)
        precompute = bool(args.precompute_ref_log_probs) or given
        temporary = ref_model is None and not peft  # TRL would load a reference from the Hub by the model's name
        if temporary:
            ref_model = copy.deepcopy(model).eval().requires_grad_(False)
        collator = VAGDPOCollator(processing_class, step=noise_step, seed=args.seed, background=background,
                                  fixed_noise=precompute)  # fmt: skip
        kwargs.setdefault("data_collator", TRLCollator(collator))
        args.precompute_ref_log_probs = False  # TRL refuses it for image datasets: done below instead
        try:
            super().__init__(model, ref_model, args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                             processing_class=processing_class, peft_config=peft_config, **kwargs)  # fmt: skip
        finally:
            args.precompute_ref_log_probs = precompute
        if precompute:
            self.precompute_ref_logps = True
            self.train_dataset = self._with_reference_logps(self.train_dataset)
            if self.eval_dataset is not None:
                self.eval_dataset = self._with_reference_logps(self.eval_dataset)
            if temporary:
                self.ref_model = None  # the copy served the precomputation only

    @torch.no_grad()
    def _with_reference_logps(self, dataset):
        """``dataset`` with ``ref_chosen_logps`` / ``ref_rejected_logps`` columns (kept when given),
        from one reference pass over it in batches, before training."""
        from tqdm.auto import tqdm

        if {"ref_chosen_logps", "ref_rejected_logps"} <= set(dataset.column_names):
            return dataset
        model = self.ref_model if self.ref_model is not None else self.model
        size = self.args.precompute_ref_batch_size or self.args.per_device_train_batch_size
        chosen, rejected = [], []
        for start in tqdm(range(0, len(dataset), size), desc="reference log-probs", disable=self.args.disable_tqdm):
            batch = self.data_collator([dict(r) for r in dataset.select(range(start, min(start + size, len(dataset))))])
            batch = {k: v.to(self.accelerator.device) for k, v in batch.items()}
            pair = self.compute_ref_log_probs(model, batch)
            chosen += pair[0].float().cpu().tolist()
            rejected += pair[1].float().cpu().tolist()
        return dataset.add_column("ref_chosen_logps", chosen).add_column("ref_rejected_logps", rejected)

    @staticmethod
    def _with_anchors(dataset, model, processor, anchor, batch_size, cache):
        from datasets import Dataset

        if not isinstance(dataset, Dataset):
            raise TypeError(
                f"VAGDPOTrainer takes a datasets.Dataset, got {type(dataset).__name__}; from a list of records: "
                "datasets.Dataset.from_list(records)."
            )
        if "anchor" in dataset.column_names:
            return dataset
        return add_anchors(dataset, model, processor, batch_size=batch_size, cache_dir=cache, anchor=anchor)

    def _set_signature_columns_if_needed(self) -> None:
        if self._signature_columns is None:
            self._signature_columns = list(COLUMNS)
