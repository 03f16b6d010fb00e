"""Attention drift on purpose: a positive control for the guard and its peers.

:func:`inject_drift` corrupts the decoder's attention of each new query over the image keys from
decode step ``start_step`` on, by a gain ``g`` that grows linearly to ``strength`` over ``ramp``
steps, in one of the failure patterns the ADAPT paper describes:

- ``"flatten"``: the image logits shrink toward their mean, ``m + (l − m) / (1 + g)`` (image
  attention spreads out);
- ``"border"``: ``g`` is added to the logits of each grid's outer ring of tokens (attention
  pulled to the image border);
- ``"sink"``: ``g`` is added to the logit of one image token per row, chosen by ``seed``
  (attention pulled to a fixed sink);
- ``"decay"``: ``g`` is subtracted from every image logit (attention leaves the image for the text).

``flatten``, ``border`` and ``sink`` then shift the image logits so that the image keys keep their
total attention: they change where on the image the model looks, not how much; ``decay`` changes
only how much. Text keys and the prefill are never touched. The corruption happens inside the
attention kernels, and a :func:`~adapt_hooks.guard` on the model observes the corrupted attention
as the model's own (either order of nesting), so its monitor sees the drift and its methods can
answer it.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from . import compat, scoring, signals
from .adapters import get_adapter
from .hooks import perturb
from .hooks.install import AttentionSwap, Installed
from .hooks.interceptor import ACTIVE, attend, resolve_base
from .layout import ImageLayout
from .validation import check_count, check_number

KINDS = ("flatten", "border", "sink", "decay")
_VISIBLE = -1e30  # logits at or below this are masked keys (a hidden image, padding)


def corrupt(logits: torch.Tensor, image: torch.Tensor, target: torch.Tensor | None, kind: str, gain: float) -> torch.Tensor:
    """The logits ``[B', H_kv, G, kv]`` of one decode step with drift of ``kind`` at ``gain``.

    ``image`` ``[B, P]`` marks the image keys of each row among the first ``P`` keys, ``target``
    ``[B, P]`` the keys that ``"border"`` and ``"sink"`` pull toward. ``B'`` may be a multiple of
    ``B`` (contrast streams repeat the user's rows). Masked keys stay masked.
    """
    rows, length = logits.shape[0], image.shape[-1]
    if rows != image.shape[0]:
        image = image.repeat(rows // image.shape[0], 1)
        target = None if target is None else target.repeat(rows // target.shape[0], 1)
    prefill = logits[..., :length]
    visible = image[:, None, None, :] & (prefill > _VISIBLE)
    if kind == "decay":
        edited = prefill - gain * visible
    else:
        if kind == "flatten":
            count = visible.sum(-1, keepdim=True).clamp_min(1)
            mean = torch.where(visible, prefill, 0.0).sum(-1, keepdim=True) / count
            moved = mean + (prefill - mean) / (1.0 + gain)
        else:
            moved = prefill + gain * target[:, None, None, :]
        shift = _logsumexp(prefill, visible) - _logsumexp(moved, visible)  # keep the image's total attention
        edited = torch.where(visible, moved + torch.nan_to_num(shift, nan=0.0), prefill)
    return torch.cat([edited, logits[..., length:]], -1)


def _logsumexp(x: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    return torch.logsumexp(torch.where(where, x, float("-inf")), -1, keepdim=True)


def border_keys(layout: ImageLayout) -> torch.Tensor:
    """``[B, P]`` bool: the prefill keys on the outer ring of each row's image grids."""
    marked = torch.zeros(layout.batch_size, layout.prefill_length, dtype=torch.bool)
    positions = layout.positions.cpu()
    for b, grids in enumerate(layout.grids):
        for grid in grids:
            ring = scoring.border_mask(grid.height, grid.width, band=1).flatten()
            marked[b, positions[b, grid.offset + torch.nonzero(ring).flatten()]] = True
    return marked


def sink_keys(layout: ImageLayout, where: float) -> torch.Tensor:
    """``[B, P]`` bool: one image key per row, the one at fraction ``where`` ∈ [0, 1) of its image keys."""
    marked = torch.zeros(layout.batch_size, layout.prefill_length, dtype=torch.bool)
    counts = layout.valid.sum(-1).tolist()
    positions = layout.positions.cpu()
    for b, n in enumerate(counts):
        if n:
            marked[b, positions[b, int(where * n)]] = True
    return marked


def image_keys(layout: ImageLayout) -> torch.Tensor:
    """``[B, P]`` bool: the prefill keys that are image keys."""
    marked = torch.zeros(layout.batch_size, layout.prefill_length, dtype=torch.bool)
    rows = torch.arange(layout.batch_size)[:, None].expand_as(layout.positions)
    valid = layout.valid.cpu()
    marked[rows[valid], layout.positions.cpu()[valid]] = True
    return marked


class DriftInjection(Installed):
    """Context manager returned by :func:`inject_drift`; see the module docstring for the kinds.

    Entering installs a forward pre-hook (that counts decode steps and finds each prompt's image
    keys) and an attention function that applies the corruption; when a guard is already active
    on the model, the corruption goes under the guard's interceptor instead, so the guard still
    observes every step. Leaving restores the model exactly. :attr:`gain` is the gain of the
    current decode step.
    """

    def __init__(
        self,
        model: nn.Module,
        kind: str,
        strength: float,
        start_step: int = 6,
        ramp: int = 4,
        seed: int = 0,
        layers: Iterable[int] | None = None,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"inject_drift(kind=...) must be one of {KINDS}, got {kind!r}.")
        self.model, self.kind = model, kind
        self.strength = check_number("inject_drift(strength=...)", strength)
        self.start_step = check_count("inject_drift(start_step=...)", start_step)
        self.ramp = check_count("inject_drift(ramp=...)", ramp)
        self.seed = int(seed)
        self.adapter = get_adapter(model)
        modules = self.adapter.attention_modules(model)
        hookable = self.adapter.hookable_layers(model, modules)
        chosen = hookable if layers is None else sorted({int(i) for i in layers})
        bad = [i for i in chosen if i not in hookable]
        if not chosen or bad:
            raise ValueError(f"inject_drift(layers=...) must name hookable decoder layers {hookable}; got {bad or 'nothing'}.")
        self.layers = chosen
        self._modules = [modules[i] for i in chosen]
        self._where = float(torch.rand((), generator=torch.Generator().manual_seed(self.seed)))  # the sink's place
        self._hooks: list = []
        self._swap: AttentionSwap | None = None  # this injection's own registration, when no guard is active
        self._swapped = None  # the guard interceptor whose base this injection replaced
        self._base = None
        self._capture: compat.ImageCapture | None = None  # the image encoder's inputs (5.23 on), while installed
        self._begin(None)

    def __repr__(self) -> str:
        return (
            f"DriftInjection(kind={self.kind!r}, strength={self.strength}, start_step={self.start_step}, "
            f"ramp={self.ramp}, seed={self.seed})"
        )

    @property
    def gain(self) -> float:
        """The corruption's gain at the current decode step (0 before ``start_step``)."""
        if self._image is None or self._step < self.start_step:
            return 0.0
        return self.strength * min(1.0, (self._step - self.start_step + 1) / self.ramp)

    # -- install / restore --------------------------------------------------------------------
    _what = "drift injection"

    def _install(self) -> None:
        compat.check()
        for module in self._modules:
            perturb.register(module, self._perturbation)
        current = compat.text_attention(self.model)
        guard = ACTIVE.get(current)
        if guard is not None:  # under the guard's interceptor: it observes, then calls this
            self._swapped, self._base = guard, guard.base
            guard.base = self
        else:
            self._base, mask_builder = resolve_base(current, self._modules[0])
            self._swap = AttentionSwap(self.model, "adapt_hooks_drift", self, mask_builder)
        self._capture = compat.ImageCapture(self.model)
        # first among the model's pre-hooks: it sees the user's rows before a guard adds streams
        self._hooks = [self.model.register_forward_pre_hook(self._on_forward, with_kwargs=True, prepend=True)]

    def _restore(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks = []
        if self._capture is not None:
            self._capture.remove()
            self._capture = None
        for module in self._modules:
            if perturb.of(module) == self._perturbation:
                perturb.unregister(module)
        if self._swapped is not None:
            self._swapped.base, self._swapped = self._base, None
        if self._swap is not None:
            self._swap.remove()
            self._swap = None
        self._begin(None)

    # -- per prompt / step ----------------------------------------------------------------------
    def _begin(self, layout: ImageLayout | None) -> None:
        self._step = 0
        self._image = self._target = None
        self._on_device: dict[torch.device, tuple[torch.Tensor, torch.Tensor | None]] = {}
        if layout is None or not layout.any_image:
            return
        self._image = image_keys(layout)
        self._target = {"border": border_keys, "sink": lambda lay: sink_keys(lay, self._where)}.get(self.kind, lambda lay: None)(layout)

    def _on_forward(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        cache = compat.forward_cache(kwargs)
        if cache is None or cache.get_seq_length() == 0:
            input_ids = kwargs.get("input_ids", args[0] if args else None)
            seen = compat.layout_inputs(self.model, self._capture, kwargs, input_ids)
            layout = None if input_ids is None else self.adapter.layout(self.model.config, input_ids, seen)
            self._begin(layout)
        else:
            self._step += 1

    def _keys_on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
        keys = self._on_device.get(device)
        if keys is None:
            keys = self._on_device[device] = (
                self._image.to(device), None if self._target is None else self._target.to(device)
            )
        return keys

    def _perturbation(self, logits: torch.Tensor) -> torch.Tensor:
        gain = self.gain
        if gain == 0.0:
            return logits
        image, target = self._keys_on(logits.device)
        return corrupt(logits, image, target, self.kind, gain)

    # -- the attention function -------------------------------------------------------------------
    def __call__(
        self, module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
        attention_mask: torch.Tensor | None, **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:  # fmt: skip
        attention_mask, kwargs = compat.index_mask(query, key, attention_mask, kwargs)  # sparse (DSA) attention's pick
        if query.shape[2] != 1 or self.gain == 0.0 or perturb.of(module) != self._perturbation:
            return self._base(module, query, key, value, attention_mask, **kwargs)
        scaling = kwargs.get("scaling")
        scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
        with torch.no_grad():
            logits = signals.attention_logits(query, key, attention_mask, scaling, kwargs.get("softcap"))
            probs = signals.softmax(self._perturbation(logits))
        return attend(probs, value, query.dtype)


def inject_drift(
    model: nn.Module,
    kind: str = "flatten",
    strength: float = 1.0,
    start_step: int = 6,
    ramp: int = 4,
    seed: int = 0,
    layers: Iterable[int] | None = None,
) -> DriftInjection:
    """Corrupt ``model``'s text-to-image attention inside a ``with`` block, from decode step
    ``start_step`` on (default: just after the paper's 5-step anchor phase), growing to
    ``strength`` over ``ramp`` steps; ``kind`` is one of ``"flatten"``, ``"border"``, ``"sink"``,
    ``"decay"`` (see :mod:`adapt_hooks.stress`). ``strength=0`` changes nothing.

    >>> with adapt_hooks.stress.inject_drift(model, "decay", 4.0), adapt_hooks.guard(model) as run:  # doctest: +SKIP
    ...     out = model.generate(**inputs)
    """
    return DriftInjection(model, kind, strength, start_step=start_step, ramp=ramp, seed=seed, layers=layers)
