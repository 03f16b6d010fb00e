"""transformers compatibility: every difference inside the supported range, the canary that names
a changed internal, and the rule that a guard never silently does nothing."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import torch
import transformers
from transformers import DynamicCache, modeling_utils

import adapt_hooks
from adapt_hooks import DriftMonitor, canary, compat
from adapt_hooks.tiny import tiny_inputs, tiny_model

from .conftest import FAMILIES, _model, generate
from .test_lifecycle import snapshot

ROOT = Path(__file__).resolve().parents[1]


# -- the canary -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def record():
    return canary.trace()


def test_canary_finds_every_internal_as_the_guard_expects(record):
    failed = [str(f) for f in canary.findings(record) if not f.ok]
    if failed:
        pytest.fail(f"transformers {transformers.__version__} changed: " + " | ".join(failed), pytrace=False)


def _copy(record, **changes):
    return dataclasses.replace(record, forward_calls=[dict(call) for call in record.forward_calls], **changes)


def _rename_cache(record):
    changed = _copy(record)
    changed.forward_calls[1]["kv_cache"] = changed.forward_calls[1].pop(compat.CACHE_KEYWORD)
    return changed


def _drop_images(record):
    changed = _copy(record)
    for name in compat.IMAGE_KEYWORDS:
        changed.forward_calls[0].pop(name, None)
    changed.forward_calls[0]["image_features"] = torch.zeros(1)
    return changed


def _calls(record, **changes):
    return _copy(record, attention_calls=[dataclasses.replace(c, **changes) for c in record.attention_calls])


CHANGES = {
    "cache keyword": (_rename_cache, "as kv_cache=, not " + compat.CACHE_KEYWORD),
    "prefill images": (_drop_images, r"under none of .* \(it gets: .*image_features"),
    "attention call": (lambda r: _calls(r, positional=4), "4 positional arguments"),
    "attention call (scaling)": (lambda r: _calls(r, keywords=("dropout",)), "no scaling= keyword"),
    "attention call (keys)": (lambda r: _calls(r, key=(2, 2, r.prompt_length, 8)), "decode keys of shape"),
    "mask interface": (lambda r: _calls(r, mask=False), "without a mask"),
    "eager attention": (lambda r: _copy(r, eager=False), "no longer defines eager_attention_forward"),
    "reorder_cache": (lambda r: _copy(r, reordered=False), "no longer calls the cache's reorder_cache"),
}


@pytest.mark.parametrize("change", CHANGES)
def test_each_canary_check_names_what_changed(record, change):
    mutate, message = CHANGES[change]
    found = {f.check: f for f in canary.findings(mutate(record))}
    check = change.split(" (")[0]
    assert not found[check].ok
    assert re.search(message, found[check].detail), found[check].detail
    assert "\n" not in str(found[check])
    assert all(f.ok for name, f in found.items() if name != check)


def test_a_release_outside_the_range_is_refused_or_warned(monkeypatch):
    monkeypatch.setattr(compat, "INSTALLED", "5.16.1")
    with pytest.raises(compat.CompatibilityError, match=r"transformers 5\.16\.1: older than .* 5\.17\.0"):
        compat.check.__wrapped__()
    monkeypatch.setattr(compat, "INSTALLED", "5.31.0.dev0")
    assert compat.is_newer_than_tested() and not compat.is_newer_than_tested(compat.NEWEST_TESTED)
    with pytest.warns(UserWarning, match=r"tested with transformers 5\.17\.0 to .*; 5\.31\.0\.dev0 is installed"):
        compat.check.__wrapped__()


def test_a_missing_registry_is_refused_in_one_line(monkeypatch, llava):
    monkeypatch.delattr(modeling_utils, "AttentionInterface")
    with pytest.raises(compat.CompatibilityError, match="no AttentionInterface") as error:
        compat.check.__wrapped__()
    assert "\n" not in str(error.value)


# -- what differs inside the range, one test each ---------------------------------------------------
def test_the_cache_is_read_under_either_keyword_and_an_unknown_one_raises():
    cache = DynamicCache()
    assert compat.forward_cache({"cache": cache}) is cache
    assert compat.forward_cache({"past_key_values": cache, "use_cache": True}) is cache
    assert compat.forward_cache({"input_ids": torch.zeros(1, 1)}) is None
    with pytest.raises(compat.CompatibilityError, match="as kv_cache=, a keyword adapt-hooks does not know"):
        compat.forward_cache({"kv_cache": cache})


def test_generate_passes_the_cache_under_the_installed_keyword(llava):
    seen = []
    handle = llava.register_forward_pre_hook(lambda m, a, k: seen.append(sorted(k)), with_kwargs=True)
    try:
        generate(llava, tiny_inputs(llava, 1), max_new_tokens=2)
    finally:
        handle.remove()
    assert compat.CACHE_KEYWORD in seen[1]


@pytest.mark.parametrize("keyword", ["installed", "past_key_values"])
def test_a_hand_written_loop_may_pass_the_cache_under_either_keyword(llava, keyword):
    keyword = compat.CACHE_KEYWORD if keyword == "installed" else keyword
    inputs = tiny_inputs(llava, 1)
    with adapt_hooks.guard(llava, monitor=DriftMonitor(tau=1e9, alpha=2.0)) as run:
        expected = generate(llava, inputs, max_new_tokens=8)
        expected_history = run.monitor.history
    with adapt_hooks.guard(llava, monitor=DriftMonitor(tau=1e9, alpha=2.0)) as run, torch.no_grad():
        out = llava(**inputs, use_cache=True)
        tokens = [out.logits[:, -1].argmax(-1, keepdim=True)]
        for _ in range(7):
            out = llava(input_ids=tokens[-1], use_cache=True, **{keyword: compat.output_cache(out)})
            tokens.append(out.logits[:, -1].argmax(-1, keepdim=True))
    assert torch.equal(torch.cat(tokens, 1), expected[:, inputs["input_ids"].shape[1] :])
    assert run.decode_steps == 7
    for name, values in expected_history.items():
        torch.testing.assert_close(run.monitor.history[name], values, equal_nan=True)


def test_the_output_cache_is_read_from_a_forward(llava):
    with torch.no_grad():
        out = llava(**tiny_inputs(llava, 1), use_cache=True)
    assert compat.output_cache(out) is out.past_key_values and out.past_key_values.get_seq_length() > 0


def test_images_are_recognised_raw_encoded_or_as_cross_attention_states():
    x = torch.zeros(1)
    assert compat.image_input({"pixel_values": x}) == "pixel_values"
    assert compat.image_input({"mm_encoder_outputs": {"image": x}}) == "mm_encoder_outputs"
    assert compat.encoded_images({"mm_encoder_outputs": {"image": x}}) is x
    assert compat.image_input({"cross_attention_states": x}) == "cross_attention_states"
    assert compat.image_input({"mm_encoder_outputs": {"video": x}, "pixel_values": None}) is None
    assert compat.image_input({"mm_encoder_outputs": {}}) is None and compat.encoded_images({}) is None


@pytest.mark.parametrize("family", FAMILIES)
def test_generate_and_a_hand_written_prefill_give_the_same_layout(family):
    """generate hands the prefill encoded images from 5.23 on, a hand-written call raw pixels:
    both must place the image keys on the same grids."""
    model = _model(family, "sdpa")
    inputs = tiny_inputs(model, 2)
    with adapt_hooks.guard(model, monitor=DriftMonitor(steer=False)) as run:
        generate(model, inputs, max_new_tokens=2)
        from_generate = run.anchor.layout
        with torch.no_grad():
            model(**inputs, use_cache=True)
        by_hand = run._layout
    assert torch.equal(by_hand.positions, from_generate.positions) and torch.equal(by_hand.valid, from_generate.valid)
    assert by_hand.grids == from_generate.grids


def test_registering_and_unregistering_leaves_both_registries_as_they_were(llava):
    before = snapshot(llava)
    compat.register("adapt_hooks_test", compat.attention_function("sdpa"), compat.mask_function("sdpa"))
    assert compat.attention_function("adapt_hooks_test") is not None and compat.mask_function("adapt_hooks_test")
    compat.unregister("adapt_hooks_test")
    compat.unregister("adapt_hooks_test")  # a second time is a no-op
    assert compat.attention_function("adapt_hooks_test") is None and compat.mask_function("adapt_hooks_test") is None
    assert snapshot(llava) == before


def test_the_declared_minimum_and_the_tested_range_are_stated_where_users_read_them():
    assert f'"transformers>={compat.MINIMUM}"' in (ROOT / "pyproject.toml").read_text()
    readme = (ROOT / "README.md").read_text()
    assert f"transformers {compat.MINIMUM} to {compat.NEWEST_TESTED}" in readme
    assert compat.tested_range() in (ROOT / "docs" / "faq.md").read_text()


# -- never silently do nothing ------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_generate_without_a_cache_is_refused_and_the_model_restored(family):
    model = _model(family, "sdpa")
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"use_cache=False\) is not supported"):
        with adapt_hooks.guard(model):
            generate(model, tiny_inputs(model, 2), max_new_tokens=3, use_cache=False)
    assert snapshot(model) == before


def test_a_hand_written_loop_without_a_cache_is_refused(llava):
    ids = tiny_inputs(llava, 1)
    with adapt_hooks.guard(llava), torch.no_grad():
        out = llava(**ids)
        ids = {**ids, "input_ids": torch.cat([ids["input_ids"], out.logits[:, -1:].argmax(-1)], 1)}
        ids["attention_mask"] = torch.ones_like(ids["input_ids"])
        with pytest.raises(ValueError, match="without a KV cache"):
            llava(**ids)


def test_a_decode_step_whose_prefill_the_guard_did_not_see_is_refused(llava):
    inputs = tiny_inputs(llava, 1)
    with torch.no_grad():
        out = llava(**inputs, use_cache=True)  # prefill before the guard
        token = out.logits[:, -1:].argmax(-1)
        with adapt_hooks.guard(llava):
            with pytest.raises(RuntimeError, match=r"did not see start \(transformers \d"):
                llava(input_ids=token, past_key_values=out.past_key_values, use_cache=True)
            llava(**inputs, use_cache=True)  # a new prompt is fine
            with pytest.raises(RuntimeError, match="did not see start"):  # and the old cache still is not
                llava(input_ids=token, past_key_values=out.past_key_values, use_cache=True)


def test_a_cache_under_a_renamed_keyword_is_refused_naming_it(llava, monkeypatch):
    before = snapshot(llava)
    monkeypatch.setattr(compat, "CACHE_KEYWORDS", tuple(k for k in compat.CACHE_KEYWORDS if k != compat.CACHE_KEYWORD))
    with pytest.raises(compat.CompatibilityError, match=f"as {compat.CACHE_KEYWORD}=, a keyword adapt-hooks does not know"):
        with adapt_hooks.guard(llava):
            generate(llava, tiny_inputs(llava, 1), max_new_tokens=3)
    monkeypatch.undo()
    assert snapshot(llava) == before


def test_a_cache_the_guard_cannot_see_at_all_is_caught_after_the_forward(llava, monkeypatch):
    """The 5.24 failure, generalised: whatever hides the cache, the forward that continues it shows."""
    monkeypatch.setattr(compat, "forward_cache", lambda kwargs: None)
    with pytest.warns(UserWarning, match="no image tokens"):  # the decode step looks like a text prompt...
        with pytest.raises(compat.CompatibilityError, match="continued a KV cache"):  # ...until its output is seen
            with adapt_hooks.guard(llava):
                generate(llava, tiny_inputs(llava, 1), max_new_tokens=3)


def test_images_the_guard_cannot_place_are_refused(llava):
    inputs = tiny_inputs(llava, 1)
    ids = inputs["input_ids"]
    blind = {**inputs, "input_ids": torch.where(ids == llava.config.image_token_id, 20, ids)}
    with adapt_hooks.guard(llava), torch.no_grad():
        with pytest.raises(ValueError, match=r"brings images \(pixel_values=\) but its input_ids hold no image token"):
            llava(**blind)
        embeds = llava.get_input_embeddings()(ids)
        with pytest.raises(ValueError, match="but it has no input_ids"):
            llava(inputs_embeds=embeds, pixel_values=inputs["pixel_values"])
    with adapt_hooks.guard(llava), pytest.raises(ValueError, match=r"brings images \((pixel_values|mm_encoder_outputs)=\)"):
        generate(llava, blind, max_new_tokens=3)


def test_a_prompt_given_only_as_embeddings_warns_that_the_guard_does_nothing(llava):
    embeds = llava.get_input_embeddings()(torch.tensor([[1, 20, 21]]))
    with adapt_hooks.guard(llava) as run, torch.no_grad():
        with pytest.warns(UserWarning, match="has no input_ids to find image tokens in"):
            llava(inputs_embeds=embeds)
    assert run.decode_steps == 0


def test_an_adapter_sees_the_image_encoders_inputs_repeated_for_beams():
    """From 5.23 generate leaves image_grid_thw out of the prefill; the guard adds it back for the
    adapter, each sample's images repeated as a group per beam (row 0: two images, row 1: one)."""
    from adapt_hooks.adapters import Qwen2VLAdapter
    from adapt_hooks.tiny._common import BOS, IMAGE, VISION_END, VISION_START, text_tokens
    from adapt_hooks.tiny.qwen2_vl import batch_inputs

    model = tiny_model("qwen2_vl")
    vision, generator = model.config.vision_config, torch.Generator().manual_seed(0)
    patch_dim = 3 * vision.temporal_patch_size * vision.patch_size**2
    images = [[(1, 4, 4), (1, 2, 6)], [(1, 6, 2)]]
    rows = [[BOS] + [t for thw in row for t in [VISION_START] + [IMAGE] * (thw[1] * thw[2] // 4) + [VISION_END]]
            + text_tokens(b, generator) for b, row in enumerate(images)]  # fmt: skip
    grids = [thw for row in images for thw in row]
    inputs = batch_inputs(rows, [torch.randn(t * h * w, patch_dim, generator=generator) for t, h, w in grids], grids)
    seen = []

    class Recording(Qwen2VLAdapter):
        def row_grids(self, config, is_image, n_tokens, given):
            seen.append(given.get("image_grid_thw"))
            return super().row_grids(config, is_image, n_tokens, given)

    with adapt_hooks.guard(model, adapter=Recording(), monitor=DriftMonitor(steer=False)) as run:
        model.generate(**inputs, do_sample=False, num_beams=2, max_new_tokens=2)
    expected = torch.tensor([grids[0], grids[1], grids[0], grids[1], grids[2], grids[2]])
    assert seen and torch.equal(seen[0], expected)
    assert run.anchor.layout.grid_shapes[:2] == (((2, 2), (1, 3)),) * 2 and run.anchor.layout.grid_shapes[2] == ((3, 1),)
