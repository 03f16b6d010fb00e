"""``adapt-hooks check``: run a tiny model through every transformers internal the guard relies
on, and name, in one line each, whatever behaves differently from what :mod:`compat` expects.

A new transformers release that renames the cache keyword, stops handing images to the prefill
under a known keyword, changes the attention-function call, drops the mask for a registered
attention name or stops calling ``reorder_cache`` in beam search fails here with its name, instead
of the guard misbehaving somewhere downstream. :func:`trace` records what happened and
:func:`findings` judges the record, so that each judgement can be tested on its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from . import compat


@dataclass
class AttentionCall:
    """What the attention function registered for the text layers received in one call."""

    positional: int  # arguments before the keywords: module, query, key, value, attention_mask
    query: tuple[int, ...]
    key: tuple[int, ...]
    mask: bool  # an attention mask was passed
    keywords: tuple[str, ...]


@dataclass
class Trace:
    """What a tiny model did in transformers' hands: the keyword arguments of each forward call
    of ``generate`` (prefill first), the attention calls of its first text layer, and whether beam
    search called the cache's ``reorder_cache``."""

    forward_calls: list[dict[str, object]] = field(default_factory=list)
    attention_calls: list[AttentionCall] = field(default_factory=list)
    prompt_length: int = 0
    reordered: bool = False
    eager: bool = False


@dataclass(frozen=True)
class Finding:
    check: str
    ok: bool
    detail: str

    def __str__(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'}  {self.check}: {self.detail}"


def trace(model_type: str = "llava") -> Trace:
    """Generate 2 tokens for a left-padded batch of 2 on the tiny ``model_type`` model with a
    recording attention function, then beam-search 3 tokens; record what the internals did."""
    from .adapters import get_adapter
    from .tiny import tiny_inputs, tiny_model

    model = tiny_model(model_type, "sdpa")
    inputs = tiny_inputs(model, 2)
    record = Trace(prompt_length=inputs["input_ids"].shape[1])
    first = next(m for m in get_adapter(model).attention_modules(model) if m is not None)
    record.eager = compat.eager_attention(first) is not None
    sdpa = compat.attention_function("sdpa")

    def attention(module, *args, **kwargs):
        if module is first:
            query, key = args[0], args[1]
            mask = args[3] if len(args) > 3 else kwargs.get("attention_mask")
            record.attention_calls.append(
                AttentionCall(1 + len(args), tuple(query.shape), tuple(key.shape), mask is not None, tuple(kwargs))
            )
        return sdpa(module, *args, **kwargs)

    def on_forward(module, args, kwargs):
        record.forward_calls.append(dict(kwargs))
        for value in kwargs.values():
            if callable(getattr(type(value), compat.REORDER, None)) and compat.REORDER not in vars(value):
                original = getattr(value, compat.REORDER)

                def reorder(*a, _original=original, **k):
                    record.reordered = True
                    return _original(*a, **k)

                setattr(value, compat.REORDER, reorder)

    name = "adapt_hooks_canary"
    saved = compat.text_attention(model)
    compat.register(name, attention, compat.mask_function("sdpa"))
    compat.set_text_attention(model, name)
    handle = model.register_forward_pre_hook(on_forward, with_kwargs=True)
    try:
        with torch.no_grad():
            model.generate(**inputs, max_new_tokens=2, do_sample=False)
            calls = len(record.forward_calls)
            model.generate(**inputs, max_new_tokens=3, num_beams=2, do_sample=False)
        del record.forward_calls[calls:]
    finally:
        handle.remove()
        compat.set_text_attention(model, saved)
        compat.unregister(name)
    return record


def findings(record: Trace) -> list[Finding]:
    """Judge a :class:`Trace` against what :mod:`compat` expects, one :class:`Finding` per internal."""
    return [
        _release(),
        _cache_keyword(record),
        _prefill_images(record),
        _attention_call(record),
        _mask(record),
        Finding("eager attention", record.eager, "the modeling file defines eager_attention_forward"
                if record.eager else "the text attention's modeling file no longer defines eager_attention_forward"),
        Finding("reorder_cache", record.reordered, f"beam search calls the cache's {compat.REORDER}()" if record.reordered
                else f"beam search no longer calls the cache's {compat.REORDER}(), so per-row state would not follow beams"),
    ]  # fmt: skip


def run(model_type: str = "llava") -> list[Finding]:
    """:func:`findings` of a fresh :func:`trace`; a trace that fails is itself the finding."""
    try:
        record = trace(model_type)
    except Exception as error:  # noqa: BLE001 - any failure is what the user must see
        line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return [_release(), Finding("tiny model run", False, f"{type(error).__name__}: {line}")]
    return findings(record)


def _release() -> Finding:
    try:
        compat.check()
    except compat.CompatibilityError as error:
        return Finding("release", False, str(error))
    tested = "within" if not compat.is_newer_than_tested() else "newer than"
    return Finding("release", True, f"transformers {compat.INSTALLED}, {tested} the tested range {compat.tested_range()}")


def _cache_keyword(record: Trace) -> Finding:
    if len(record.forward_calls) < 2:
        return Finding("cache keyword", False, f"generate made {len(record.forward_calls)} forward call(s) for 2 tokens")
    decode = record.forward_calls[1]
    holding = [name for name, value in decode.items() if callable(getattr(type(value), compat.REORDER, None))]
    if compat.CACHE_KEYWORD in holding:
        return Finding("cache keyword", True, f"generate passes the KV cache to forward as {compat.CACHE_KEYWORD}=")
    passed = ", ".join(f"{n}=" for n in holding) or "no keyword"
    return Finding("cache keyword", False, f"generate passes the KV cache to forward as {passed}, not {compat.CACHE_KEYWORD}=")


def _prefill_images(record: Trace) -> Finding:
    prefill = record.forward_calls[0] if record.forward_calls else {}
    carried = compat.image_input(prefill)
    if carried is not None:
        return Finding("prefill images", True, f"generate hands the prefill its images as {carried}=")
    given = ", ".join(sorted(k for k, v in prefill.items() if v is not None))
    return Finding("prefill images", False, f"the prefill gets its images under none of {', '.join(compat.IMAGE_KEYWORDS)} "
                   f"(it gets: {given})")  # fmt: skip


def _attention_call(record: Trace) -> Finding:
    calls = record.attention_calls
    if len(calls) < 2:
        return Finding("attention call", False, f"the registered attention function was called {len(calls)} time(s) "
                       "for a prefill and a decode step: the text layers no longer dispatch through it")  # fmt: skip
    decode = calls[1]
    problems = []
    if decode.positional != 5:
        problems.append(f"{decode.positional} positional arguments instead of (module, query, key, value, attention_mask)")
    if "scaling" not in decode.keywords:
        problems.append(f"no scaling= keyword (got {', '.join(decode.keywords) or 'none'})")
    if len(decode.query) != 4 or decode.query[2] != 1:
        problems.append(f"a decode query of shape {list(decode.query)} instead of [batch, heads, 1, head_dim]")
    if len(decode.key) != 4 or decode.key[2] != record.prompt_length + 1:
        problems.append(f"decode keys of shape {list(decode.key)} instead of [batch, kv_heads, "
                        f"{record.prompt_length + 1} (the prompt and the new token), head_dim]")  # fmt: skip
    if problems:
        return Finding("attention call", False, "the attention function now gets " + "; ".join(problems))
    return Finding("attention call", True, "fn(module, query, key, value, attention_mask, scaling=..., ...), keys after the cache update")


def _mask(record: Trace) -> Finding:
    if len(record.attention_calls) < 2:
        return Finding("mask interface", False, "no decode-step attention call to look at")
    if all(call.mask for call in record.attention_calls[:2]):
        return Finding("mask interface", True, "a registered attention name gets the mask format registered with it")
    return Finding("mask interface", False, "a left-padded batch reached the registered attention function without a mask: "
                   "the mask registry no longer serves registered names")  # fmt: skip
