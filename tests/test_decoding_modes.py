"""Every way of calling generate: sampling, beam search (the per-row state follows the cache's
reordering), several sequences per prompt, batches mixing rows with and without images, streaming,
a static cache, a torch.compile'd forward, and assisted decoding (refused, clearly)."""

from __future__ import annotations

import logging
import threading

import pytest
import torch
from transformers import CompileConfig, DynamicCache, TextIteratorStreamer

import adapt_hooks
from adapt_hooks import Anchor, DriftMonitor
from adapt_hooks.tiny import tiny_inputs, tiny_model
from adapt_hooks.tiny._common import FIRST_TEXT_ID, IMAGE
from adapt_hooks.tiny.llava import processor

from .conftest import _model, generate
from .test_lifecycle import snapshot

STEER = dict(tau=1e9, alpha=2.0)


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_seeded_sampling_observe_only_is_identical(family):
    model = _model(family, "sdpa")
    inputs = tiny_inputs(model, 1)
    kwargs = dict(max_new_tokens=8, do_sample=True, top_k=0, num_return_sequences=2)
    torch.manual_seed(7)
    expected = model.generate(**inputs, **kwargs)
    with adapt_hooks.guard(model, monitor=DriftMonitor(steer=False)) as run:
        torch.manual_seed(7)
        got = model.generate(**inputs, **kwargs)
    assert torch.equal(got, expected)
    assert run.anchor.weights.shape[0] == 2  # one anchor per returned sequence
    assert run.monitor.history["amc"].shape == (7, len(run.layers), 2)


def test_beam_search_observe_only_is_token_identical(model):
    inputs = tiny_inputs(model, 2)
    kwargs = dict(max_new_tokens=8, num_beams=2, num_return_sequences=2)
    expected = generate(model, inputs, **kwargs)
    with adapt_hooks.guard(model, monitor=DriftMonitor(steer=False)) as run:
        got = generate(model, inputs, **kwargs)
    assert torch.equal(got, expected)
    assert run.anchor.weights.shape[0] == 4  # generate expands the batch to 2 prompts x 2 beams before the prefill
    assert run.anchor.layout.batch_size == 4


def _two_prompts(model):
    """Two prompts of the same layout (same lengths, no padding) but their own image and text."""
    a, b = tiny_inputs(model, 1, seed=1), tiny_inputs(model, 1, seed=2)
    return {name: torch.cat([a[name], b[name]]) for name in a}


def _decode(model, inputs, steps, swap_after=()):
    """Greedy hand-written loop under a steering guard; after each decode step in ``swap_after``
    the two rows trade places in the cache (``reorder_cache``, as beam search does) and in the
    token stream. Returns the per-step logits, the anchor weights and the history."""
    with torch.no_grad(), adapt_hooks.guard(model, anchor=Anchor(k=3), monitor=DriftMonitor(**STEER)) as run:
        out = model(**inputs, use_cache=True)
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        logits = []
        for step in range(1, steps + 1):
            out = model(input_ids=token, past_key_values=out.past_key_values, use_cache=True)
            logits.append(out.logits[:, -1])
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            if step in swap_after:
                out.past_key_values.reorder_cache(torch.tensor([1, 0]))
                token = token.flip(0)
        return torch.stack(logits), run.anchor.weights, run.monitor.history


def test_reordered_rows_keep_their_own_anchor_and_monitor_state():
    """Rows trade places once while the anchor records (step 2) and once while it steers (step 5):
    every per-row state must travel with its row, so each prompt's logits are those of an
    unswapped run, only in the other row between the swaps."""
    model = _model("llava", "sdpa")
    inputs = _two_prompts(model)
    reference, ref_weights, ref_history = _decode(model, inputs, 8)
    swapped, weights, history = _decode(model, inputs, 8, swap_after=(2, 5))
    assert (ref_weights[0] - ref_weights[1]).abs().max() > 0.1  # the two prompts have different anchors
    order = torch.tensor([0, 0, 1, 1, 1, 0, 0, 0])  # steps 3..5 see the rows swapped
    for t, flipped in enumerate(order.tolist()):
        expected = reference[t].flip(0) if flipped else reference[t]
        torch.testing.assert_close(swapped[t], expected, rtol=0, atol=1e-5)
        expected_amc = ref_history["amc"][t].flip(-1) if flipped else ref_history["amc"][t]
        torch.testing.assert_close(history["amc"][t], expected_amc, equal_nan=True)
    torch.testing.assert_close(weights, ref_weights)  # swapped twice: back in place
    assert history["steered"][3:].eq(1).all()


def test_steered_beam_search_follows_the_cache_and_gives_it_back(model):
    inputs = tiny_inputs(model, 2)
    cache = DynamicCache(config=model.config.get_text_config())
    with adapt_hooks.guard(model, anchor=Anchor(k=3), monitor=DriftMonitor(**STEER)) as run:
        generate(model, inputs, max_new_tokens=8, num_beams=2, past_key_values=cache)
        assert "reorder_cache" in vars(cache)  # wrapped while the prompt is guarded
    assert "reorder_cache" not in vars(cache)  # given back on leaving
    assert run.monitor.intervention_rate == 1.0
    assert run.monitor.history["amc"][3:].isfinite().all()


def test_batch_mixing_rows_with_and_without_images():
    model = _model("llava", "sdpa")
    inputs = tiny_inputs(model, 2)
    row = inputs["input_ids"][1]
    inputs["input_ids"][1] = torch.where(row == IMAGE, FIRST_TEXT_ID, row)  # row 1: text only
    inputs["pixel_values"] = inputs["pixel_values"][:1]
    expected = generate(model, inputs)
    with adapt_hooks.guard(model, monitor=DriftMonitor(steer=False)) as run:
        assert torch.equal(generate(model, inputs), expected)
    with adapt_hooks.guard(model, monitor=DriftMonitor(**STEER)) as run:
        generate(model, inputs)
    steered = run.monitor.history["steered"][run.anchor.k :]
    assert steered[..., 0].eq(1).all() and steered[..., 1].eq(0).all()
    assert run.monitor.intervention_rate == 1.0  # rows without an image do not count
    assert run.anchor.layout.grid_shapes == (((8, 8),), ())


def test_a_single_new_token_observes_nothing(llava):
    """No decode step at all (the prefill's token only): no anchor, no history, no error.
    Fewer than k decode steps: tests/test_generation.py::test_fewer_than_k_tokens_gives_no_anchor."""
    inputs = tiny_inputs(llava, 1)
    with adapt_hooks.guard(llava, monitor=DriftMonitor(**STEER)) as run:
        out = generate(llava, inputs, max_new_tokens=1)
    assert torch.equal(out, generate(llava, inputs, max_new_tokens=1))
    assert run.anchor.weights is None and run.monitor.history == {} and run.monitor.intervention_rate == 0.0


def test_streaming_with_text_iterator_streamer():
    model, tokenizer = _model("llava", "sdpa"), processor().tokenizer
    inputs = tiny_inputs(model, 1)
    expected = generate(model, inputs, max_new_tokens=8)
    with adapt_hooks.guard(model, monitor=DriftMonitor(steer=False)) as run:
        streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, timeout=60)
        worker = threading.Thread(
            target=model.generate, kwargs=dict(**inputs, max_new_tokens=8, do_sample=False, streamer=streamer)
        )
        worker.start()
        text = "".join(streamer)
        worker.join()
    assert text == tokenizer.decode(expected[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert run.monitor.history["amc"].shape[0] == 7


def test_static_cache_matches_the_dynamic_cache(llava):
    inputs = tiny_inputs(llava, 2)
    kwargs = dict(max_new_tokens=9, output_logits=True, return_dict_in_generate=True)
    results = []
    for cache in ("dynamic", "static"):
        with adapt_hooks.guard(llava, anchor=Anchor(k=3), monitor=DriftMonitor(tau=0.9, alpha=2.0)) as run:
            out = generate(llava, inputs, cache_implementation=cache, **kwargs)
        results.append((out, run.monitor.history))
    (dynamic, h_dynamic), (static, h_static) = results
    assert torch.equal(static.sequences, dynamic.sequences)
    for a, b in zip(static.logits, dynamic.logits):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-4)
    for name in h_dynamic:
        torch.testing.assert_close(h_static[name], h_dynamic[name], equal_nan=True, rtol=0, atol=1e-5)


def test_compiled_forward_runs_the_guard_eagerly():
    """generate compiles the forward with a static cache (on GPU; forced here on the CPU, with the
    quick "eager" backend); the guard runs at graph breaks and gives the uncompiled result."""
    model = tiny_model("llava", "sdpa")
    inputs = tiny_inputs(model, 1)
    compiled = CompileConfig(backend="eager")
    compiled._compile_all_devices = True
    kwargs = dict(max_new_tokens=4, cache_implementation="static", output_logits=True, return_dict_in_generate=True)
    results = []
    logging.getLogger("torch._dynamo").setLevel(logging.ERROR)
    for config in (None, compiled):
        with adapt_hooks.guard(model, anchor=Anchor(k=1), monitor=DriftMonitor(**STEER)) as run:
            out = generate(model, inputs, compile_config=config, **kwargs)
        results.append((out, run.monitor.history))
    assert hasattr(model, "_compiled_call")  # the compiled forward really ran
    (plain, h_plain), (fast, h_fast) = results
    assert torch.equal(fast.sequences, plain.sequences)
    for a, b in zip(fast.logits, plain.logits):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    assert torch.equal(h_fast["steered"], h_plain["steered"]) and h_fast["steered"][1:].eq(1).all()


def test_assisted_decoding_is_refused_and_the_model_restored():
    model, assistant = _model("llava", "sdpa"), tiny_model("llava", "sdpa", seed=1)
    inputs = tiny_inputs(model, 1)
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"brings \d+ new tokens.*assistant_model=, prompt_lookup_num_tokens="):
        with adapt_hooks.guard(model):
            generate(model, inputs, assistant_model=assistant)
    assert snapshot(model) == before
    generate(model, inputs, assistant_model=assistant)  # unguarded, it still works
