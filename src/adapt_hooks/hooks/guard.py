"""``guard(model)``: install the attention interceptor and the forward hooks that run the monitor
and the decoding methods on a stock transformers VLM, and restore the model exactly."""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import nn

from .. import compat
from ..adapters import Adapter, resolve_adapter
from ..anchor import Anchor
from ..layout import ImageLayout
from ..methods.base import Method, Prompt
from ..monitor import DriftMonitor
from . import perturb
from .cache import follow, release
from .install import AttentionSwap, Installed
from .interceptor import ACTIVE, Interceptor, eager_under_compile, resolve_base
from .streams import Streams

class Guard(Installed):
    """Context manager returned by :func:`guard`; inside the ``with`` block it is the run record.

    ``run.anchor`` and ``run.monitor`` hold the last guarded prompt's anchor and drift history;
    ``run.methods`` are the decoding methods it runs (the monitor's ADAPT steering by default).
    Entering points the language model's attention implementation at a freshly registered
    interceptor and adds a forward pre-hook and a forward hook on the model; leaving (normally or
    by exception) undoes all of it and unregisters the name. A guard can be entered again after it
    was left.

    While a prompt is guarded, its KV cache's ``reorder_cache`` (what beam search calls between
    steps) also reorders the anchor's and the monitor's per-row state, so that each row's state
    follows its hypothesis; the cache is given back untouched when the next prompt starts or the
    guard is left.
    """

    def __init__(
        self,
        model: nn.Module,
        anchor: Anchor | None = None,
        monitor: DriftMonitor | None = None,
        layers: Iterable[int] | None = None,
        methods: Sequence[Method] | None = None,
        adapter: Adapter | str | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"guard() expects a transformers model (torch.nn.Module), got {type(model).__name__}.")
        self.model = model
        self.adapter = resolve_adapter(model, adapter)
        self.anchor = Anchor() if anchor is None else anchor
        self.monitor = DriftMonitor() if monitor is None else monitor
        if not isinstance(self.anchor, Anchor):
            raise TypeError(f"anchor= must be an adapt_hooks.Anchor, got {type(self.anchor).__name__}.")
        if not isinstance(self.monitor, DriftMonitor):
            raise TypeError(f"monitor= must be an adapt_hooks.DriftMonitor, got {type(self.monitor).__name__}.")
        if self.monitor.risk_model is not None:
            self.monitor.risk_model.check(model)
        modules = self.adapter.attention_modules(model)
        self.n_layers = len(modules)
        self.layers = self._check_layers(layers, self.adapter.hookable_layers(model, modules))
        self._modules = [modules[i] for i in self.layers]
        self.methods, self._editing = self._check_methods(methods)
        self._active: list[list[Method]] = [[] for _ in self.layers]  # the current prompt's (none in training)
        self._next_token: list[Method] = []  # the current prompt's methods that edit the next-token logits
        self._streams = Streams(model, self.methods, self.adapter.packed_inputs)
        self._capture: compat.ImageCapture | None = None  # the image encoder's inputs, while installed
        self._prompt: Prompt | None = None
        self._swap: AttentionSwap | None = None  # the interceptor's registration, while installed
        self._hooks: list = []
        self._layout: ImageLayout | None = None
        self._layout_by_device: dict[torch.device, tuple[torch.Tensor, torch.Tensor | None]] = {}
        self._uniform = True  # every row of the current prompt has as many image keys as the widest
        self._step = 0
        self._warned = False
        self._cache: weakref.ref | None = None  # the cache whose reorder_cache this guard wraps
        self._prompt_cache: weakref.ref | None = None  # the KV cache of the prompt whose prefill this guard saw
        self._awaiting: int | None = None  # that prefill's new tokens, when it got no cache: take the one it returns
        self._uncached_ids: torch.Tensor | None = None  # input_ids of the last prompt that came without a cache

    def _check_layers(self, layers: Iterable[int] | None, hookable: list[int]) -> list[int]:
        if layers is None:
            return hookable
        chosen = sorted(set(int(i) for i in layers))
        bad = [i for i in chosen if i not in hookable]
        if not chosen or bad:
            ranges = _ranges(hookable)
            raise ValueError(
                f"layers= must name decoder layers among the hookable layers of {self.model.config.model_type}: "
                f"{ranges}; got {'nothing' if not chosen else bad}."
            )
        return chosen

    def _check_methods(self, methods: Sequence[Method] | None) -> tuple[list[Method], list[list[Method]]]:
        """The methods to run (the monitor's ADAPT steering by default), and per hooked slot the
        ones that edit its attention, in list order."""
        chosen = self.monitor.default_methods() if methods is None else list(methods)
        for method in chosen:
            if not isinstance(method, Method):
                raise TypeError(
                    f"methods= must list adapt_hooks methods (ADAPT, PAI, VCD or a Method subclass), got "
                    f"{type(method).__name__}."
                )
        reading = [m for m in chosen if m.needs_risk]
        if reading and self.monitor.risk_model is None:
            raise ValueError(f"{reading[0]!r} reads the hallucination risk: give the guard DriftMonitor(risk=RiskModel.load(...)).")
        if len({id(m) for m in chosen}) != len(chosen):
            raise ValueError("methods= lists the same method object twice; make one object per entry.")
        editing: list[list[Method]] = [[] for _ in self.layers]
        for method in chosen:
            if not method.edits_attention:
                continue
            layers = sorted(set(method.select_layers(self.layers, self.n_layers)))
            outside = [i for i in layers if i not in self.layers]
            if outside:
                raise ValueError(
                    f"{method!r} edits layers {outside}, which this guard does not hook ({_ranges(self.layers)}): "
                    "pass them in guard(layers=...) or choose the method's layers among them."
                )
            for layer in layers:
                editing[self.layers.index(layer)].append(method)
        return chosen, editing

    def __repr__(self) -> str:
        methods = ", ".join(map(repr, self.methods)) or "observe only"
        return (
            f"Guard({type(self.model).__name__}, layers={self.layers[0]}..{self.layers[-1]} "
            f"({len(self.layers)}), {self.anchor!r}, {self.monitor!r}, methods=[{methods}])"
        )

    # -- install / restore --------------------------------------------------------------------
    _what = "guard"

    @property
    def _name(self) -> str | None:
        """The name the interceptor is registered under while the guard is active."""
        return None if self._swap is None else self._swap.name

    def _install(self) -> None:
        compat.check()
        saved = compat.text_attention(self.model)
        outer = ACTIVE.get(saved)
        if outer is not None and (self._streams.methods or outer.guard._streams.methods):
            raise ValueError(
                "A guard with a contrast method (VCD, PAI(cfg_gamma=...)) cannot be nested with another guard on the "
                "same model: leave the outer guard's block first, or put every method in one guard's methods=[...]."
            )
        base, mask_builder = resolve_base(saved, self._modules[0])
        slots = {id(module): slot for slot, module in enumerate(self._modules)}
        interceptor = Interceptor(self, base, mask_builder, slots)
        self._swap = AttentionSwap(self.model, "adapt_hooks", interceptor, mask_builder)
        ACTIVE[self._swap.name] = interceptor
        hook = _PreHook(self)
        self._hooks = [
            self.model.register_forward_pre_hook(hook, with_kwargs=True),
            self.model.register_forward_hook(hook.after),
        ]
        self._capture = compat.ImageCapture(self.model)
        self._streams.install(self._capture)
        self._begin(None)

    def _restore(self) -> None:
        """Undo everything ``_install`` did; safe to call at any point of it, and twice."""
        for handle in self._hooks:
            handle.remove()
        self._hooks = []
        if self._swap is not None:
            ACTIVE.pop(self._swap.name, None)
            self._swap.remove()
            self._swap = None
        self._release_cache()
        self._streams.remove()
        if self._capture is not None:
            self._capture.remove()
            self._capture = None
        self._layout_by_device = {}
        self._prompt_cache, self._awaiting, self._uncached_ids = None, None, None

    # -- per forward call ---------------------------------------------------------------------
    def _on_forward(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        """Forward pre-hook: a call without a cache or on an empty one starts a new prompt; a call
        on the cache of the prompt this guard saw start is one of its decode steps. Any other call
        raises: a step the guard cannot place is never let through unobserved. With contrast
        methods, returns the call's arguments with every stream's rows added."""
        cache = compat.forward_cache(kwargs)
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        prefill = cache is None or cache.get_seq_length() == 0
        if prefill:
            if cache is None:
                self._refuse_recomputed_step(input_ids)
            self._begin(input_ids, kwargs, training=module.training)
            self._prompt_cache = None if cache is None else weakref.ref(cache)
            new = input_ids if input_ids is not None else kwargs.get("inputs_embeds")
            self._awaiting = None if cache is not None or new is None else new.shape[1]
            self._uncached_ids = input_ids if cache is None and self._layout is not None else None
        elif self._prompt_cache is None or self._prompt_cache() is not cache:
            raise RuntimeError(
                "adapt_hooks.guard: a decode step arrived on a KV cache whose prompt this guard did not see start "
                f"(transformers {compat.INSTALLED}). Start each prompt inside the `with` block, on an empty cache; if "
                "that is what happened, run `adapt-hooks check` to see whether this transformers changed an internal "
                "the guard relies on."
            )
        elif self._layout is not None:
            new = input_ids if input_ids is not None else kwargs.get("inputs_embeds")
            if new is not None and new.shape[1] != 1:
                raise ValueError(
                    f"adapt_hooks.guard: this forward call brings {new.shape[1]} new tokens to a non-empty KV cache; "
                    "the guard observes and steers one new token per row and decode step. Assisted or speculative "
                    "decoding (assistant_model=, prompt_lookup_num_tokens=) and chunked prefill (prefill_chunk_size=) "
                    "are not supported: generate without them, or start the prompt on an empty cache."
                )
            self._step += 1
        if self._layout is not None and cache is not None:
            self._follow(cache)
        if self._streams.methods and (self._streams.batch is not None or (prefill and self._next_token)):
            return self._add_streams(args, kwargs, prefill, cache)
        return None

    def _add_streams(self, args: tuple, kwargs: dict, prefill: bool, cache) -> tuple[tuple, dict]:
        if len(args) > 1 or (args and "input_ids" in kwargs):
            raise ValueError("With a contrast method, pass the forward's inputs as keywords (input_ids=..., ...).")
        kwargs = {"input_ids": args[0], **kwargs} if args else kwargs
        if prefill:
            return (), self._streams.prefill(kwargs, self._prompt, cache)
        return (), self._streams.step(kwargs, self._prompt)

    @property
    def main_rows(self) -> int | None:
        """The user's rows in a forward call that also carries contrast rows, else ``None``."""
        return self._streams.batch

    def cache_index(self, beam_idx: torch.Tensor) -> torch.Tensor:
        """A beam reordering of the user's rows as the cache's rows see it (every stream's too)."""
        return self._streams.cache_index(beam_idx)

    def _on_output(self, output: object) -> object:
        """Forward hook: a prefill that came without a cache continues on the one it returns (that
        cache holds just the prefill's tokens; one holding more means the call was a decode step
        whose cache reached the model by a way this guard does not know, which it refuses). The
        methods that edit the next-token logits edit them here, and contrast rows are cut off."""
        if self._awaiting is not None:
            expected, self._awaiting = self._awaiting, None
            cache = compat.output_cache(output)
            if cache is not None and cache.get_seq_length() > expected:
                raise compat.CompatibilityError(
                    "the model continued a KV cache that its forward did not receive under any keyword adapt-hooks "
                    f"reads ({', '.join(k + '=' for k in compat.CACHE_KEYWORDS)}), so the guard took a decode step for a "
                    "new prompt"
                )
            self._prompt_cache = None if cache is None else weakref.ref(cache)
        if self._next_token and self._layout is not None:
            if not isinstance(output, Mapping) or output.get("logits") is None:
                raise ValueError(f"{self._next_token[0]!r} edits the next-token logits: call the model with return_dict=True.")
            logits, streams = output["logits"], {}
            if self._streams.batch is not None:
                logits, streams = self._streams.contrast_logits(logits)
            for method in self._next_token:
                logits = method.next_token(logits, streams.get(id(method)))
            output["logits"] = logits
            if self._streams.batch is not None:
                self._streams.cut(output)
        if self._layout is not None and self._step > 0 and self.monitor.risk_model is not None:
            self.monitor.end_step(output["logits"][:, -1])
        return output

    def _refuse_recomputed_step(self, input_ids: torch.Tensor | None) -> None:
        """A cacheless call whose ``input_ids`` are the previous cacheless prompt with images plus
        one token is a decode step recomputed from scratch (``generate(use_cache=False)``):
        refused, since the guard observes decode steps through the KV cache."""
        previous = self._uncached_ids
        if (
            previous is not None and input_ids is not None and input_ids.ndim == 2
            and input_ids.shape == (previous.shape[0], previous.shape[1] + 1)
            and torch.equal(input_ids[:, :-1], previous)
        ):  # fmt: skip
            raise ValueError(
                "adapt_hooks.guard: generation without a KV cache (use_cache=False) is not supported: each step "
                "recomputes the whole sequence, and the guard observes and steers decode steps through the cache. "
                "Generate with use_cache=True (the default)."
            )

    # -- beam search ----------------------------------------------------------------------------
    def _follow(self, cache) -> None:
        """Follow ``cache`` through beam search (see :class:`BeamFollower`); the previous
        prompt's cache, if another, is released first."""
        if self._cache is not None and self._cache() is cache:
            return
        self._release_cache()
        if follow(cache, self):
            self._cache = weakref.ref(cache)

    def _release_cache(self) -> None:
        cache = None if self._cache is None else self._cache()
        self._cache = None
        if cache is not None:
            release(cache, self)

    def reorder_rows(self, beam_idx: torch.Tensor) -> None:
        """Row ``b`` of the cache now continues the hypothesis of row ``beam_idx[b]``: the anchor,
        the monitor and the methods gather their per-row state the same way (on the device, no
        host sync)."""
        if self._layout is None:
            return
        self.anchor.reorder(beam_idx)
        self.monitor.reorder(beam_idx)
        for method in self.methods:
            method.reorder(beam_idx)

    def _begin(self, input_ids: torch.Tensor | None, inputs: dict | None = None, training: bool = False) -> None:
        self._step = 0
        self._layout, self._layout_by_device = None, {}
        self._release_cache()
        carried = None if inputs is None else compat.image_input(inputs)
        seen = compat.layout_inputs(self.model, self._capture, inputs or {}, input_ids)
        layout = None if input_ids is None else self.adapter.layout(self.model.config, input_ids, seen)
        if layout is not None and layout.any_image:
            self._layout = layout
        elif carried is not None:
            where = "its input_ids hold no image token" if input_ids is not None else "it has no input_ids"
            raise ValueError(
                f"adapt_hooks.guard: the prompt brings images ({carried}=) but {where}, so the guard cannot place "
                f"them on the image keys ({self.model.config.model_type}, transformers {compat.INSTALLED}). Pass the "
                "input_ids the processor returned with the images; if you did, run `adapt-hooks check`."
            )
        elif inputs is not None and not self._warned:
            self._warned = True
            why = "has no image tokens" if input_ids is not None else "has no input_ids to find image tokens in"
            warnings.warn(f"adapt_hooks.guard: the prompt {why}, so the guard does nothing for it.", stacklevel=4)
        self.anchor.begin(self._layout, self.layers, self.n_layers)
        self.monitor.begin(self._layout, len(self.layers))
        acting = self._layout is not None and (not training or self.monitor.steer_in_training)
        self._active = [list(methods) if acting else [] for methods in self._editing]
        self._next_token = [m for m in self.methods if m.edits_logits] if acting else []
        self._streams.batch, self._prompt = None, None
        if self._layout is not None:
            self._check_prompt(self._layout, acting)
            image_tokens = self.adapter.image_mask(self.model.config, input_ids)
            self._prompt = Prompt(self._layout, self.anchor, tuple(self.layers), self.n_layers, self.adapter, image_tokens)
            for method in self.methods:
                method.start(self._prompt)

    def _check_prompt(self, layout: ImageLayout, acting: bool) -> None:
        """Refuse, at prefill, what would otherwise fail in the middle of decoding; build the
        layout's index tensors now so that the decode steps need no host-to-device copy."""
        layout.shape_groups, layout.grids_per_row  # noqa: B018 (cached on first access)
        self._uniform = bool(layout.valid.all())
        if self.anchor.debias is not None:
            for shape in {shape for row in layout.grid_shapes for shape in row}:
                self.anchor.debias.check(shape)
        needing = [self.monitor] if self.monitor.normalize == "anchor" else []
        needing += [m for m in self.methods if m.needs_anchor_maps and acting]
        maps = self.anchor.maps if self.anchor.preset else None
        if self.anchor.preset and needing and (maps is None or maps.shape[1] != len(self.layers)):
            raise ValueError(
                f"This preset anchor has {'no layer maps' if maps is None else f'maps of {maps.shape[1]} layers'}, "
                f"but {needing[0]!r} needs the anchor-phase maps of the {len(self.layers)} hooked layers: pass "
                "DriftMonitor(normalize=None) (logprior steering), or an anchor saved from a guard with the same layers."
            )

    @property
    def decode_steps(self) -> int:
        """Decode steps the guard observed for the last prompt with image tokens (0: none)."""
        return self._step if self._layout is not None else 0

    @property
    def observing(self) -> bool:
        """True during the decode steps of a prompt that has image tokens."""
        return self._layout is not None and self._step > 0

    def positions_on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(positions, valid)`` of the current prompt's image keys on ``device`` (cached);
        ``valid`` is ``None`` when every row has the same number of image keys."""
        cached = self._layout_by_device.get(device)
        if cached is None:
            layout = self._layout
            valid = None if self._uniform else layout.valid.to(device)
            cached = self._layout_by_device[device] = (layout.positions.to(device), valid)
        return cached

    def edits(self, slot: int) -> bool:
        """Whether a method may edit hooked layer ``slot``'s attention in this prompt."""
        return bool(self._active[slot])

    def decode_step(
        self,
        slot: int,
        query: torch.Tensor,
        key: torch.Tensor,
        attention_mask: torch.Tensor | None,
        scaling: float,
        softcap: float | None,
        probs: torch.Tensor | None = None,
    ) -> torch.Tensor | None:
        """One hooked layer's decode step: the monitor observes it (from the kernel's ``probs``
        when it returned them; recording it for the anchor during the anchor phase), the methods
        of this layer edit it in list order; returns the probabilities to attend with, or ``None``
        when no method edited it."""
        positions, valid = self.positions_on(query.device)
        monitoring = self._step > self.anchor.recording_steps and self.anchor.ready
        anchor = self.anchor if monitoring else None
        perturbation = perturb.of(self._modules[slot])  # a stress test's corruption of this layer's kernel
        step = self.monitor.observe(
            slot, self.layers[slot], query, key, attention_mask, scaling, softcap, positions, valid, anchor, perturbation, probs
        )
        if not monitoring:
            self.anchor.record(slot, step.attention, last_layer=slot == len(self.layers) - 1)
        for method in self._active[slot]:
            method.attend(step)
        self.monitor.record(step)
        return step.result()


class _PreHook:
    """The guard's forward pre-hook and, as :meth:`after`, its forward hook. Both run eagerly
    inside a ``torch.compile``'d forward (the per-prompt state lives in Python, which a compiled
    graph would freeze), and the hook refuses to be copied or pickled: a copy of the model would
    keep pointing at this guard's attention function, which is unregistered when the ``with``
    block ends."""

    def __init__(self, guard: Guard) -> None:
        self.guard = guard

    @eager_under_compile
    def __call__(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        return self.guard._on_forward(module, args, kwargs)

    @eager_under_compile
    def after(self, module: nn.Module, args: tuple, output: object) -> object:
        return self.guard._on_output(output)

    def _refuse(self, *args) -> None:
        raise TypeError(
            f"A model inside `with adapt_hooks.guard(...)` cannot be copied or pickled ({type(self.guard.model).__name__} "
            "would keep pointing at the guard's attention function, which is unregistered when the block ends): copy or "
            "save it before entering or after leaving the block."
        )

    __deepcopy__ = __reduce_ex__ = __reduce__ = _refuse


def _ranges(indices: list[int]) -> str:
    """``[0, 1, 2, 5, 11]`` -> ``"0..2, 5, 11"``."""
    parts, start = [], None
    for i, value in enumerate(indices):
        if start is None:
            start = value
        if i + 1 == len(indices) or indices[i + 1] != value + 1:
            parts.append(str(start) if start == value else f"{start}..{value}")
            start = None
    return ", ".join(parts)


def guard(
    model: nn.Module,
    anchor: Anchor | None = None,
    monitor: DriftMonitor | None = None,
    layers: Iterable[int] | None = None,
    methods: Sequence[Method] | None = None,
    adapter: Adapter | str | None = None,
) -> Guard:
    """Watch (and, by default, steer) the text-to-image attention of ``model`` inside a ``with`` block.

    >>> with adapt_hooks.guard(model) as run:               # doctest: +SKIP
    ...     out = model.generate(**inputs, max_new_tokens=64)
    >>> run.anchor.weights, run.monitor.intervention_rate    # doctest: +SKIP

    ``anchor`` and ``monitor`` default to the paper's settings (K=5, tau=0.6, alpha=0.5);
    ``layers`` restricts hooking to those decoder-layer indices (default: all). ``methods`` runs
    the given decoding methods in list order instead of the monitor's ADAPT steering (for example
    ``[adapt_hooks.ADAPT(), adapt_hooks.VCD()]``); the monitor observes alongside them.
    ``adapter="generic"`` watches a model type without an adapter of its own through the generic
    fallback (:class:`adapt_hooks.adapters.GenericAdapter`); an :class:`~adapt_hooks.Adapter`
    instance is used as given.
    """
    return Guard(model, anchor=anchor, monitor=monitor, layers=layers, methods=methods, adapter=adapter)
