"""The protocol every decoding intervention ("method") follows.

A method says what it needs (the anchor, the layers it edits, a contrast stream) and edits two
things the guard hands it: one hooked layer's decode-step attention (:meth:`Method.attend`, on an
:class:`AttentionStep`) and the next-token logits of each forward call (:meth:`Method.next_token`).
The guard runs the methods of a ``guard(model, methods=[...])`` in list order and never looks
inside one; adding a method means writing one subclass (see ``docs/methods.md``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch

from .. import signals
from ..layout import ImageLayout

if TYPE_CHECKING:  # annotations only: neither module depends on the methods
    from ..adapters.base import Adapter
    from ..anchor import Anchor


@dataclass(frozen=True)
class Prompt:
    """What a method sees of a new prompt at its prefill."""

    layout: ImageLayout  # the image keys of each (main-stream) row
    anchor: Anchor  # the prompt's anchor: recorded during the first k decode steps, then ready
    layers: tuple[int, ...]  # decoder-layer index of each hooked slot
    n_layers: int  # decoder layers of the model
    adapter: Adapter  # the model family's adapter (hide_images for an image-free stream)
    image_tokens: torch.Tensor  # [B, P] bool: the prefill's image placeholders (newline slots included)

    @property
    def batch_size(self) -> int:
        return self.layout.batch_size


class AttentionStep:
    """One hooked layer's decode step as methods see it: the new query's attention over all keys of
    the main-stream rows, float32, ``[B, H_kv, G, kv]`` (query head ``h`` reads kv head ``h // G``).

    The guard's monitor has already observed it: :attr:`attention` is the head-mean image
    attention ``[B, N]`` of the unedited step and :attr:`score` its (anchor-normalised) AMC,
    ``None`` during the anchor phase; :attr:`risk` the previous decode step's hallucination risk
    ``[B, 1]`` when the monitor has a risk model. A method edits the step in one of three ways, applied in the
    order they are called: :meth:`set_logits` (a new pre-softmax tensor), :meth:`scale_prefill`
    (multiply the prefill keys' probabilities, i.e. add ``log factor`` to their logits, without a
    second softmax) or :meth:`set_probs` (post-softmax). A logit edit after a probability edit
    sees ``log p`` as the logits. :meth:`mark` records the rows a method steered, for the history.
    """

    def __init__(
        self, slot: int, layer: int, logits: torch.Tensor, probs: torch.Tensor, positions: torch.Tensor,
        valid: torch.Tensor | None, image_total: torch.Tensor, score: torch.Tensor | None,
    ) -> None:  # fmt: skip
        self.slot, self.layer = slot, layer
        self.positions, self.valid = positions, valid
        self.score = score
        self._image_total = image_total  # head-summed image attention of the unedited step
        self._logits: torch.Tensor | None = logits  # None: stale (the probabilities were edited)
        self._probs: torch.Tensor | None = probs  # None: stale (the logits were edited)
        # pending multipliers of the prefill keys' probabilities, not yet applied to each form
        self._logits_factor: torch.Tensor | None = None
        self._probs_factor: torch.Tensor | None = None
        self.edited = False
        self.steered: torch.Tensor | None = None  # [B, 1] bool: rows a method steered this step
        self.observation: object = None  # the monitor's own record of the step
        self.risk: torch.Tensor | None = None  # [B, 1]: the previous decode step's risk (a monitor with a risk model)

    @property
    def attention(self) -> torch.Tensor:
        """Head-mean attention ``[B, N]`` on each image key before any edit (0 on padding slots)."""
        current = self._probs if self._probs is not None else self._logits
        return self._image_total / (current.shape[1] * current.shape[2])

    @property
    def logits(self) -> torch.Tensor:
        """The current pre-softmax logits (masked keys at ``-inf`` or the dtype's minimum); read
        only: edit through :meth:`set_logits`."""
        if self._logits is None:
            self._logits = torch.log(self.probs)
        elif self._logits_factor is not None:
            self._logits, self._logits_factor = _add_log(self._logits, self._logits_factor), None
        return self._logits

    @property
    def probs(self) -> torch.Tensor:
        """The current attention probabilities (rows sum to 1, or to 0 where fully masked)."""
        if self._probs is None:
            self._probs, self._probs_factor = signals.softmax(self.logits), None
        elif self._probs_factor is not None:
            self._probs, self._probs_factor = signals.rescale_prefill_(self._probs, self._probs_factor), None
        return self._probs

    def image_index(self) -> torch.Tensor:
        """``positions`` broadcast to ``[B, H_kv, G, N]``, to gather or scatter the image keys."""
        current = self._probs if self._probs is not None else self._logits
        return self.positions[:, None, None, :].expand(*current.shape[:-1], -1)

    def set_logits(self, logits: torch.Tensor) -> None:
        self._logits, self._probs, self.edited = logits, None, True
        self._logits_factor = self._probs_factor = None

    def set_probs(self, probs: torch.Tensor) -> None:
        self._probs, self._logits, self.edited = probs, None, True
        self._logits_factor = self._probs_factor = None

    def scale_prefill(self, factor: torch.Tensor) -> None:
        """Multiply the probabilities of the first ``P`` keys by ``factor`` ``[B, 1, 1, P]`` (> 0)
        and renormalise: ``softmax(l + log factor)``, from the probabilities at the cost of one
        product (the logits, if read later, get ``log factor`` added then)."""
        if self._logits is not None:
            self._logits_factor = factor if self._logits_factor is None else self._logits_factor * factor
        if self._probs is not None:
            self._probs_factor = factor if self._probs_factor is None else self._probs_factor * factor
        self.edited = True

    def mark(self, rows: torch.Tensor) -> None:
        """Record that the rows where ``rows`` ``[B, 1]`` is True were steered at this step."""
        self.steered = rows if self.steered is None else self.steered | rows

    def result(self) -> torch.Tensor | None:
        """The probabilities to attend with, or ``None`` when no method edited the step."""
        return self.probs if self.edited else None


class Method:
    """Base class of a decoding intervention; subclasses override what they use.

    Class attributes say what the method needs: ``needs_anchor`` (it acts only once the prompt's
    anchor exists), ``needs_anchor_maps`` (it reads the anchor-phase layer maps, which a preset
    anchor may lack) and ``contrast`` (a short name of the second stream it compares against, e.g.
    ``"noised image"``; its rows are built by :meth:`contrast_inputs`). The guard calls:

    - :meth:`select_layers` once, when the guard is built: which hooked layers it edits;
    - :meth:`start` at each prompt's prefill;
    - :meth:`attend` at each decode step of each of its layers (after the monitor observed it);
    - :meth:`next_token` on the logits of every forward call of the prompt (prefill included);
    - :meth:`reorder` when beam search reorders the rows.

    Methods are inactive while the model is in training mode, unless the monitor says otherwise.
    """

    name: ClassVar[str] = "method"
    needs_anchor: ClassVar[bool] = False
    needs_anchor_maps: bool = False  # a class attribute, or set per object where settings decide
    needs_risk: bool = False  # it reads AttentionStep.risk: the guard's monitor needs a risk model
    contrast: str | None = None  # a class attribute, or a property where settings decide
    #: The method edits attention (its :meth:`attend` is called) / the next-token logits.
    edits_attention: bool = False
    edits_logits: bool = False

    def settings(self) -> Mapping[str, object]:
        """The method's settings, for ``repr`` and reports."""
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.settings().items())})"

    def select_layers(self, hooked: Sequence[int], n_layers: int) -> list[int]:
        """The decoder layers (among the guard's ``hooked``) whose attention this method edits."""
        return list(hooked)

    def start(self, prompt: Prompt) -> None:
        """A new prompt begins; forget the last one."""

    def attend(self, step: AttentionStep) -> None:
        """Edit one decode step of one of this method's layers (see :class:`AttentionStep`)."""

    def next_token(self, logits: torch.Tensor, contrast: torch.Tensor | None) -> torch.Tensor:
        """The logits ``[B, q, V]`` of a forward call, edited; ``contrast`` holds this method's
        contrast stream's logits of the same rows (``None`` for a method without one)."""
        return logits

    def contrast_inputs(self, inputs: dict[str, object], prompt: Prompt, *, prefill: bool, length: int) -> None:
        """Turn ``inputs`` (a copy of the forward call's keyword arguments for the user's rows)
        into those of this method's contrast rows, in place, replacing tensors rather than editing
        them. At the prefill they include the raw image inputs (``pixel_values``, ...), also where
        ``generate`` encoded the images already; ``length`` is the number of keys after the call."""
        raise NotImplementedError(f"{type(self).__name__} declares contrast={self.contrast!r} but no contrast_inputs().")

    def reorder(self, index: torch.Tensor) -> None:
        """Row ``b`` now continues the hypothesis of row ``index[b]`` (beam search)."""

    def state_tensors(self) -> list[torch.Tensor]:
        """Tensors the method keeps across steps (for memory checks)."""
        return []


def _add_log(logits: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``logits`` with ``log factor`` added to its first ``factor.shape[-1]`` keys (a new tensor)."""
    prefill = factor.shape[-1]
    return torch.cat([logits[..., :prefill] + torch.log(factor), logits[..., prefill:]], -1)
