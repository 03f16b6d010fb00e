"""VAG-DPO training pairs (see docs/vagdpo.md): the chosen response sees the anchor-enhanced (VE)
image, the rejected one a noise-injected ("blind") image; a collator turns records into the
``[chosen; rejected]`` batch that :func:`adapt_hooks.sequence_logps` consumes."""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..anchor import Anchor
from ..hooks.guard import guard
from ..monitor import DriftMonitor
from ..noise import NOISE_STEP, noise_image
from ..prompts import chat_prompt
from ..viz.visual import check_background

def make_vagdpo_pair(
    image, anchor: Anchor | torch.Tensor, *, step: int = NOISE_STEP, seed: int | None = 0, row: int = 0, box=None,
    background: str = "white",
):
    """``(VE image, noise-injected image)`` of a PIL ``image``: the anchor (an :class:`Anchor`, or
    one ``[H, W]`` grid of weights in [0, 1]) upsampled onto it over ``background`` (the method's
    ``"white"``, or ``"mean"``, ``"blur"``: see :meth:`Anchor.to_image`), and diffusion noise at
    ``step`` of 1000 (seeded: the same seed gives the same noise)."""
    if not isinstance(anchor, Anchor):
        anchor = Anchor.from_weights(torch.as_tensor(anchor, dtype=torch.float32))
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    return anchor.to_image(image, row=row, box=box, background=background), noise_image(image, step, generator)


@torch.no_grad()
def compute_anchor(model: nn.Module, inputs: Mapping[str, torch.Tensor], anchor: Anchor | None = None) -> Anchor:
    """The anchor of one prompt: ``k + 1`` greedy tokens under an observe-only guard."""
    anchor = anchor or Anchor()
    with guard(model, anchor=anchor, monitor=DriftMonitor(steer=False, history=False)):
        model.generate(**inputs, max_new_tokens=anchor.k + 1, min_new_tokens=anchor.k + 1, do_sample=False)
    if anchor.weights is None:
        raise ValueError("No anchor: the prompt has no image tokens.")
    return anchor


class VAGDPOCollator:
    """Records ``{"image", "question", "chosen", "rejected", "anchor"}`` -> a ``[chosen; rejected]``
    batch: the processor's inputs for (VE image, question + chosen answer) rows then (noise image,
    question + rejected answer) rows, right-padded, with a ``response_mask`` on the answer tokens
    (and the end-of-sequence token). ``anchor`` is an :class:`Anchor` or an ``[H, W]`` grid;
    ``step`` is the rejected image's noise step and ``background`` the VE image's (see
    :func:`make_vagdpo_pair`).

    The question goes through the processor's chat template (if it has one) with the image; the
    answer is tokenised on its own and appended, so prompt and answer never merge into one token.
    Per-token processor outputs other than ``input_ids``/``attention_mask`` (e.g.
    ``mm_token_type_ids``) are extended with zeros over the answer. A record may name its question
    ``"prompt"`` (TRL's column) instead.

    The rejected image's noise is drawn afresh at every call (``fixed_noise=False``), or fixed per
    record (``True``: seeded by the record's text, so every epoch and a reference pass made before
    training, such as precomputed reference log-probabilities, see the same noise).
    """

    def __init__(
        self, processor, *, step: int = NOISE_STEP, seed: int = 0, add_eos: bool = True, background: str = "white",
        fixed_noise: bool = False,
    ) -> None:
        self.processor = processor
        self.background = check_background(background)
        self.step = step
        self.seed = seed
        self.add_eos = add_eos
        self.fixed_noise = fixed_noise
        self._calls = 0

    def noise_seed(self, record: Mapping[str, Any], index: int) -> int:
        """The seed of the rejected image's noise for ``record``, the ``index``-th of this call."""
        if self.fixed_noise:
            text = "\x1f".join(str(record[key]) for key in (_question_key(record), "chosen", "rejected"))
            return self.seed + zlib.crc32(text.encode())
        return self.seed + 7919 * self._calls + index

    def prompt(self, question: str) -> str:
        """The prompt text of ``question`` (see :func:`adapt_hooks.prompts.chat_prompt`)."""
        return chat_prompt(self.processor, question)

    def __call__(self, records: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        missing = [key for key in ("image", _question_key(records[0]), "chosen", "rejected", "anchor") if key not in records[0]]
        if missing:
            raise ValueError(f"VAG-DPO records need keys image, question (or prompt), chosen, rejected, anchor; missing {missing}.")
        ve, blind = [], []
        for i, record in enumerate(records):
            seed = self.noise_seed(record, i)
            pair = make_vagdpo_pair(record["image"], record["anchor"], step=self.step, seed=seed, background=self.background)
            ve.append(pair[0])
            blind.append(pair[1])
        self._calls += 1
        prompts = [self.prompt(r[_question_key(r)]) for r in records] * 2
        tokenizer = self.processor.tokenizer
        side, tokenizer.padding_side = tokenizer.padding_side, "right"
        try:
            encoded = self.processor(images=ve + blind, text=prompts, padding=True, return_tensors="pt")
        finally:
            tokenizer.padding_side = side
        answers = [r["chosen"] for r in records] + [r["rejected"] for r in records]
        return _append_answers(dict(encoded), answers, tokenizer, self.add_eos)


def _question_key(record: Mapping[str, Any]) -> str:
    return "prompt" if "question" not in record and "prompt" in record else "question"


def _append_answers(encoded: dict[str, torch.Tensor], answers: list[str], tokenizer, add_eos: bool) -> dict[str, torch.Tensor]:
    """Append each row's answer tokens after its (right-padded) prompt; re-pad; mark the answers."""
    ids, attention = encoded["input_ids"], encoded["attention_mask"]
    lengths = attention.sum(-1).tolist()
    answer_ids = [tokenizer(a, add_special_tokens=False)["input_ids"] + ([tokenizer.eos_token_id] if add_eos else []) for a in answers]
    width = max(n + len(a) for n, a in zip(lengths, answer_ids))
    per_token = [k for k, v in encoded.items() if isinstance(v, torch.Tensor) and v.shape[:2] == ids.shape and k not in ("input_ids", "attention_mask")]
    out = {k: v for k, v in encoded.items() if k not in per_token + ["input_ids", "attention_mask"]}
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    new_ids = torch.full((len(answers), width), pad, dtype=ids.dtype)
    new_attention = torch.zeros((len(answers), width), dtype=attention.dtype)
    response = torch.zeros((len(answers), width), dtype=torch.bool)
    extended = {k: torch.zeros((len(answers), width), dtype=encoded[k].dtype) for k in per_token}
    for b, (n, answer) in enumerate(zip(lengths, answer_ids)):
        new_ids[b, :n] = ids[b, :n]
        new_ids[b, n : n + len(answer)] = torch.tensor(answer, dtype=ids.dtype)
        new_attention[b, : n + len(answer)] = 1
        response[b, n : n + len(answer)] = True
        for k in per_token:
            extended[k][b, :n] = encoded[k][b, :n]
    return {**out, **extended, "input_ids": new_ids, "attention_mask": new_attention, "response_mask": response}
