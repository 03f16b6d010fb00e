"""VCD inside ``generate``: its next-token logits against two plain forwards (original and noised
image) combined by the published formula, on every family; greedy, sampling and beam search; the
batch against single rows; alpha = 0 exactly unguarded; the noise against its schedule."""

from __future__ import annotations

import math

import pytest
import torch

import adapt_hooks
from adapt_hooks import VCD, DriftMonitor, compat, noise
from adapt_hooks.tiny import tiny_inputs

from .conftest import FAMILIES, _model, generate
from .references import assert_logits_match, assert_rows_as_alone, forced_logits, placeholder_free
from .test_lifecycle import snapshot

LOGITS = dict(output_logits=True, return_dict_in_generate=True)


def vcd_formula(original: torch.Tensor, noised: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    contrasted = (1 + alpha) * original - alpha * noised
    return contrasted.masked_fill(original < original.amax(-1, keepdim=True) + math.log(beta), -math.inf)


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_are_the_contrast_of_two_plain_forwards(family):
    model = _model(family, "eager")
    vcd = VCD(alpha=1.0, beta=0.1)
    inputs, out, new, run = placeholder_free(model, lambda: adapt_hooks.guard(model, methods=[vcd]), **LOGITS)
    pixels = compat.pixel_keyword(inputs)  # pixel_values, or Video-LLaVA's pixel_values_images
    noised = {**inputs, pixels: vcd.noised(inputs[pixels], inputs.get("image_grid_thw"))}
    expected = vcd_formula(forced_logits(model, inputs, new), forced_logits(model, noised, new), 1.0, 0.1)
    assert_logits_match(torch.stack(out.logits, 1), expected, atol=1e-2 if family == "paligemma" else 1e-4)
    assert torch.equal(expected.argmax(-1), new)  # greedy picked the contrasted maximum
    assert run.monitor.history["visual_mass"].shape == (4, len(run.layers), 2)  # the monitor observed the user's rows


def test_alpha_zero_and_beta_zero_is_exactly_unguarded(llava):
    inputs = tiny_inputs(llava, 2)
    expected = generate(llava, inputs, **LOGITS)
    with adapt_hooks.guard(llava, methods=[VCD(alpha=0.0, beta=0.0)]):
        got = generate(llava, inputs, **LOGITS)
    assert torch.equal(got.sequences, expected.sequences)
    for a, b in zip(got.logits, expected.logits):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)  # the user's rows ride in a batch of 4
    torch.manual_seed(3)
    sampled = llava.generate(**inputs, max_new_tokens=8, do_sample=True)
    with adapt_hooks.guard(llava, methods=[VCD(alpha=0.0, beta=0.0)]):
        torch.manual_seed(3)
        assert torch.equal(llava.generate(**inputs, max_new_tokens=8, do_sample=True), sampled)


@pytest.mark.parametrize("family", ["llava", "qwen2_vl", "idefics3", "mllama"])  # one image per row
def test_each_row_of_a_padded_batch_is_as_on_its_own(family):
    model = _model(family, "sdpa")
    assert_rows_as_alone(model, lambda: adapt_hooks.guard(model, methods=[VCD(alpha=1.5)]))


def test_beam_search_scores_follow_the_reordered_contrast_rows(llava):
    """The returned beam's score is the sum of the contrasted log-probabilities of its own tokens:
    it is only if the noised-image cache rows followed every beam reordering."""
    inputs = tiny_inputs(llava, 2)
    vcd = VCD(alpha=1.0, beta=0.1)
    with adapt_hooks.guard(llava, methods=[vcd]) as run:
        out = generate(llava, inputs, max_new_tokens=6, num_beams=3, length_penalty=0.0, output_scores=True,
                       return_dict_in_generate=True)  # fmt: skip
    assert run.decode_steps == 5
    new = out.sequences[:, inputs["input_ids"].shape[1] :]
    noised = {**inputs, "pixel_values": vcd.noised(inputs["pixel_values"], inputs.get("image_grid_thw"))}
    contrasted = vcd_formula(forced_logits(llava, inputs, new), forced_logits(llava, noised, new), 1.0, 0.1)
    expected = torch.log_softmax(contrasted, -1).gather(-1, new[..., None]).sum((1, 2))
    torch.testing.assert_close(out.sequences_scores, expected, rtol=0, atol=1e-4)
    plain = generate(llava, inputs, max_new_tokens=6, num_beams=3, length_penalty=0.0, output_scores=True,
                     return_dict_in_generate=True)  # fmt: skip
    assert not torch.allclose(out.sequences_scores, plain.sequences_scores)


def test_sampling_is_seeded_and_stays_within_the_plausible_tokens(llava):
    inputs = tiny_inputs(llava, 1)
    vcd = VCD(alpha=2.0, beta=0.9)  # the tiny model's distributions are flat: a tight cutoff
    with adapt_hooks.guard(llava, methods=[vcd]):
        torch.manual_seed(0)
        first = llava.generate(**inputs, max_new_tokens=8, do_sample=True, num_return_sequences=3, **LOGITS)
        torch.manual_seed(0)
        again = llava.generate(**inputs, max_new_tokens=8, do_sample=True, num_return_sequences=3)
    assert torch.equal(first.sequences, again)
    new = first.sequences[:, inputs["input_ids"].shape[1] :]
    chosen = torch.stack(first.logits, 1).gather(-1, new[..., None])
    assert chosen.isfinite().all()  # never a token the plausibility constraint removed
    assert torch.stack(first.logits, 1).isinf().any()  # and the constraint did remove some


def test_rows_without_an_image_are_left_alone(llava):
    inputs = tiny_inputs(llava, 2)
    text = tiny_inputs(llava, 2, images=False)
    with pytest.warns(UserWarning, match="no image tokens"), adapt_hooks.guard(llava, methods=[VCD()]):
        assert torch.equal(generate(llava, text), generate(llava, text))
    with adapt_hooks.guard(llava, methods=[VCD()]):
        guarded = generate(llava, inputs)
    assert not torch.equal(guarded, generate(llava, inputs))


def test_a_static_cache_is_refused_and_the_model_restored(llava):
    generate(llava, tiny_inputs(llava, 1), cache_implementation="static")  # generate keeps its static cache on the model
    before = snapshot(llava)
    with pytest.raises(ValueError, match="needs a dynamic KV cache"):
        with adapt_hooks.guard(llava, methods=[VCD()]):
            generate(llava, tiny_inputs(llava, 1), cache_implementation="static")
    assert snapshot(llava) == before


def test_combined_with_adapt_the_steered_rows_are_the_users(llava):
    inputs = tiny_inputs(llava, 2)
    with adapt_hooks.guard(llava, monitor=DriftMonitor(tau=1e9, alpha=2.0)) as adapt_only:
        generate(llava, inputs)
    with adapt_hooks.guard(llava, methods=[adapt_hooks.ADAPT(tau=1e9, alpha=2.0), VCD()]) as both:
        out = generate(llava, inputs)
    assert both.monitor.intervention_rate == 1.0 and out.shape == (2, inputs["input_ids"].shape[1] + 10)
    assert both.monitor.history["steered"].shape == adapt_only.monitor.history["steered"].shape


def test_noise_follows_vcds_schedule():
    betas = [1 / (1 + math.exp(-(-6 + 12 * i / 999))) * (5e-3 - 1e-5) + 1e-5 for i in range(1000)]
    expected = math.prod(1 - b for b in betas[:501])
    assert noise.vcd_cumulative_alpha(500) == pytest.approx(expected, rel=1e-9)
    pixels = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    pixels[1] = 0  # a padding image
    eps = torch.randn(3, 8, 8, generator=torch.Generator().manual_seed(7))  # one draw serves every image
    got = VCD(noise_step=500, seed=7).noised(pixels)
    for i in (0, 2):
        torch.testing.assert_close(got[i], expected**0.5 * pixels[i] + (1 - expected) ** 0.5 * eps)
    assert got[1].eq(0).all()
    patches, thw = torch.randn(20, 6), torch.tensor([[1, 2, 4], [1, 3, 4]])  # flattened patches of 8 and 12
    eps = torch.randn(12, 6, generator=torch.Generator().manual_seed(7))
    got = VCD(noise_step=500, seed=7).noised(patches, thw)
    torch.testing.assert_close(got, expected**0.5 * patches + (1 - expected) ** 0.5 * torch.cat([eps[:8], eps]))


@pytest.mark.parametrize("bad", [dict(alpha=-1.0), dict(beta=1.5), dict(beta=float("nan")), dict(noise_step=1000),
                                 dict(noise_step=2.5)])  # fmt: skip
def test_bad_settings_are_refused_at_construction(bad):
    with pytest.raises(ValueError, match="VCD"):
        VCD(**bad)
