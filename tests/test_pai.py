"""PAI on every family: its decode step against a hand-written eager attention with the
amplification, alpha = 0 exactly unguarded, each row of a padded batch as on its own, its layers
by relative depth, and its CFG step against two plain forwards (with and without the image)."""

from __future__ import annotations

import math

import pytest
import torch
from transformers.modeling_utils import AttentionInterface

import adapt_hooks
from adapt_hooks import PAI
from adapt_hooks.tiny import tiny_inputs

from .conftest import FAMILIES, _model, generate
from .references import assert_logits_match, assert_rows_as_alone, forced_logits, placeholder_free

LOGITS = dict(output_logits=True, return_dict_in_generate=True)


def test_alpha_zero_is_exactly_unguarded(model):
    inputs = tiny_inputs(model, 2)
    expected = generate(model, inputs)
    with adapt_hooks.guard(model, methods=[PAI(alpha=0.0)]) as run:
        assert torch.equal(generate(model, inputs), expected)
    assert run.monitor.history["visual_mass"].shape[0] == 9 and run.monitor.intervention_rate == 0.0


def test_amplification_acts_from_the_first_decode_step(model):
    inputs = tiny_inputs(model, 2)
    plain = generate(model, inputs, **LOGITS)
    with adapt_hooks.guard(model, methods=[PAI(alpha=3.0)]) as run:
        amplified = generate(model, inputs, **LOGITS)
    torch.testing.assert_close(amplified.logits[0], plain.logits[0], rtol=0, atol=1e-5)  # the prefill is untouched
    # ... and every decode step after it moves by more than that tolerance
    assert max((a - b).abs().max() for a, b in zip(amplified.logits[1:], plain.logits[1:])) > 1e-5
    steered = run.monitor.history["steered"]
    layers = [run.layers.index(i) for i in PAI(alpha=3.0).select_layers(run.layers, run.n_layers)]
    assert steered[:, layers].eq(1).all() and steered.sum() == steered[:, layers].sum()


@pytest.mark.parametrize("family", ["llava", "qwen2_vl", "gemma3", "idefics3"])
def test_step_matches_a_hand_written_eager_attention(family):
    """Capture each decode step's query, keys and mask in an eager model, amplify the image-key
    logits by hand in float64, and compare with the weights the model attended with."""
    model = _model(family, "eager")
    inputs = tiny_inputs(model, 2)
    pai = PAI(alpha=0.5, layers=None)
    captured = []
    with adapt_hooks.guard(model, methods=[pai]) as run:
        chosen = pai.select_layers(run.layers, run.n_layers)
        interceptor = AttentionInterface._global_mapping[run._name]

        def spy(module, query, key, value, attention_mask, **kwargs):
            out = interceptor(module, query, key, value, attention_mask, **kwargs)
            if query.shape[2] == 1:
                captured.append((module.layer_idx, query, key, attention_mask, kwargs, out[1]))
            return out

        AttentionInterface._global_mapping[run._name] = spy
        generate(model, inputs, max_new_tokens=4, output_attentions=True, return_dict_in_generate=True)
    positions, valid = run.anchor.layout.positions, run.anchor.layout.valid
    assert {layer for layer, *_ in captured} >= set(chosen)
    for layer, query, key, mask, kwargs, used in captured:
        groups = query.shape[1] // key.shape[1]
        logits = (query.double() @ key.double().repeat_interleave(groups, 1).transpose(-1, -2)) * kwargs["scaling"]
        if kwargs.get("softcap") is not None:
            logits = torch.tanh(logits / kwargs["softcap"]) * kwargs["softcap"]
        if mask is not None:
            logits = logits + mask[..., : key.shape[-2]].double()
        if layer in chosen:
            for b in range(2):
                keys = positions[b][valid[b]]
                logits[b, :, 0, keys] += 0.5 * logits[b, :, 0, keys].abs()
        torch.testing.assert_close(used.double(), torch.softmax(logits, -1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", ["llava", "qwen2_vl", "idefics3", "mllama"])  # one image per row
def test_each_row_of_a_padded_batch_is_as_on_its_own(family):
    model = _model(family, "sdpa")
    assert_rows_as_alone(model, lambda: adapt_hooks.guard(model, methods=[PAI(alpha=1.0)]))


def test_default_layers_start_at_relative_depth_two_of_32():
    assert PAI().select_layers(list(range(32)), 32) == list(range(2, 32))  # LLaVA-1.5: layers 2-31
    assert PAI().select_layers(list(range(28)), 28) == list(range(2, 28))  # Qwen2.5-VL-7B
    assert PAI().select_layers(list(range(40)), 40)[0] == 3
    assert PAI().select_layers([0, 5, 11, 17], 24) == [5, 11, 17]  # among the hooked layers only
    assert PAI(layers=[3, 1]).select_layers(list(range(4)), 4) == [1, 3]


def test_layers_the_guard_does_not_hook_are_refused(llava):
    with pytest.raises(ValueError, match=r"edits layers \[7\], which this guard does not hook \(0\.\.3\)"):
        adapt_hooks.guard(llava, methods=[PAI(layers=[2, 7])])


@pytest.mark.parametrize("family", FAMILIES)
def test_cfg_step_is_guidance_between_two_plain_forwards(family):
    """``γ (s − u) + u`` against the plain model's log-probabilities with the image and with every
    image key hidden (the positions of the unhidden prompt kept), plausibility cutoff included."""
    model = _model(family, "eager")
    inputs, out, new, _ = placeholder_free(model, lambda: adapt_hooks.guard(model, methods=[PAI(alpha=0.0, cfg_gamma=1.5)]), **LOGITS)
    s = torch.log_softmax(forced_logits(model, inputs, new), -1)
    u = torch.log_softmax(forced_logits(model, inputs, new, blind=True), -1)
    expected = (1.5 * (s - u) + u).masked_fill(s < s.amax(-1, keepdim=True) + math.log(0.1), -math.inf)
    assert_logits_match(torch.stack(out.logits, 1), expected, atol=2e-2 if family == "paligemma" else 1e-4)
    assert torch.equal(expected.argmax(-1), new)


def test_cfg_with_gamma_one_keeps_the_amplified_choice(llava):
    inputs = tiny_inputs(llava, 2)
    with adapt_hooks.guard(llava, methods=[PAI(alpha=1.0)]):
        amplified = generate(llava, inputs)
    with adapt_hooks.guard(llava, methods=[PAI(alpha=1.0, cfg_gamma=1.0)]):
        guided = generate(llava, inputs)  # γ = 1 gives s: the same greedy choice
    assert torch.equal(guided, amplified)


@pytest.mark.parametrize("bad", [dict(alpha=-0.1), dict(alpha=float("inf")), dict(cfg_gamma=-1.0), dict(cfg_cutoff=2.0),
                                 dict(layers=[]), dict(layers=[-1])])  # fmt: skip
def test_bad_settings_are_refused_at_construction(bad):
    with pytest.raises(ValueError, match="PAI"):
        PAI(**bad)
