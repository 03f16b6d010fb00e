"""VAG-DPO loss (ADAPT's Visual-Attention-Guidance DPO): a DPO preference loss whose chosen and rejected responses are
each conditioned on their own image. Pure functions of sequence log-probabilities, so any trainer
can use them; model plumbing lives in :mod:`adapt_hooks.logps` and :mod:`adapt_hooks.pairs`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..validation import check_number

LOSS_TYPES = ("sigmoid", "ipo", "hinge")


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-example losses and implicit rewards ``β (log π − log π_ref)`` of chosen and rejected.

    With ``h = (log π(y_w) − log π_ref(y_w)) − (log π(y_l) − log π_ref(y_l))``:
    "sigmoid" ``−(1 − ε) log σ(β h) − ε log σ(−β h)`` (ε = label smoothing, conservative DPO),
    "ipo" ``(h − 1 / (2β))²``, "hinge" ``max(0, 1 − β h)``. Computed in float32.
    """
    check_number("dpo_loss(beta=...)", beta, positive=True)
    chosen = policy_chosen_logps.float() - ref_chosen_logps.float()
    rejected = policy_rejected_logps.float() - ref_rejected_logps.float()
    h = chosen - rejected
    if loss_type == "sigmoid":
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    elif loss_type == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * h)
    else:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}.")
    return losses, beta * chosen.detach(), beta * rejected.detach()


class VAGDPOLoss(nn.Module):
    """Visual-Attention-Guidance DPO loss: drop-in for a custom training step.

    ``forward(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
    chosen_nll=None)`` takes summed response log-probabilities ``[B]`` (chosen conditioned on the
    anchor-enhanced image, rejected on the noise-injected one) and returns ``(loss, metrics)``;
    ``sft_weight`` adds that multiple of the chosen response's NLL.
    """

    def __init__(self, beta: float = 0.1, loss_type: str = "sigmoid", label_smoothing: float = 0.0, sft_weight: float = 0.0):
        super().__init__()
        self.beta = check_number("VAGDPOLoss(beta=...)", beta, positive=True)
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"VAGDPOLoss(loss_type=...) must be one of {LOSS_TYPES}, got {loss_type!r}.")
        self.loss_type = loss_type
        self.label_smoothing = check_number("VAGDPOLoss(label_smoothing=...)", label_smoothing)
        if self.label_smoothing >= 0.5:
            raise ValueError(f"VAGDPOLoss(label_smoothing=...) must be below 0.5, got {label_smoothing!r}.")
        self.sft_weight = check_number("VAGDPOLoss(sft_weight=...)", sft_weight)

    def extra_repr(self) -> str:
        return f"beta={self.beta}, loss_type={self.loss_type!r}, label_smoothing={self.label_smoothing}, sft_weight={self.sft_weight}"

    def forward(
        self,
        policy_chosen_logps: torch.Tensor,
        policy_rejected_logps: torch.Tensor,
        ref_chosen_logps: torch.Tensor,
        ref_rejected_logps: torch.Tensor,
        chosen_nll: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        losses, chosen_rewards, rejected_rewards = dpo_loss(
            policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
            beta=self.beta, loss_type=self.loss_type, label_smoothing=self.label_smoothing,
        )
        loss = losses.mean()
        if self.sft_weight:
            if chosen_nll is None:
                raise ValueError("VAGDPOLoss(sft_weight > 0) needs chosen_nll (see adapt_hooks.sequence_logps).")
            loss = loss + self.sft_weight * chosen_nll.float().mean()
        metrics = {
            "rewards/chosen": chosen_rewards.mean(),
            "rewards/rejected": rejected_rewards.mean(),
            "rewards/margins": (chosen_rewards - rejected_rewards).mean(),
            "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean(),
        }
        return loss, metrics
