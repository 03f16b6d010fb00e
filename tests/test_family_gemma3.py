"""Gemma 3 and PaliGemma: real checkpoints' layouts and hookable layers from their configs alone,
pan-and-scan and multi-image rows, and the query scaling and softcapping of the text attention
reaching the guard's observation."""

from __future__ import annotations

import types

import pytest
import torch
from transformers import AutoModelForImageTextToText, Gemma3Config, PaliGemmaConfig
from transformers.modeling_utils import AttentionInterface
from transformers.models.gemma3.modeling_gemma3 import Gemma3MultiModalProjector

import adapt_hooks
from adapt_hooks import DriftMonitor
from adapt_hooks.adapters import get_adapter
from adapt_hooks.layout import Grid
from adapt_hooks.adapters.base import cache_keeping_layers
from adapt_hooks.adapters.gemma3 import Gemma3Adapter
from adapt_hooks.adapters.paligemma import PaliGemmaAdapter
from adapt_hooks.tiny import paligemma as tiny_paligemma
from adapt_hooks.tiny import tiny_inputs
from adapt_hooks.tiny._common import PAD

from .conftest import _model, generate

SIGLIP = dict(
    model_type="siglip_vision_model", hidden_size=1152, intermediate_size=4304, num_hidden_layers=27,
    num_attention_heads=16,
)


def gemma3_4b() -> Gemma3Config:
    """google/gemma-3-4b-it's config values that matter here."""
    text = dict(
        hidden_size=2560, intermediate_size=10240, num_hidden_layers=34, num_attention_heads=8, num_key_value_heads=4,
        head_dim=256, query_pre_attn_scalar=256, sliding_window=1024, sliding_window_pattern=6,
        max_position_embeddings=131072, vocab_size=262208,
    )
    vision = dict(SIGLIP, image_size=896, patch_size=14)
    return Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=256)


def paligemma(text: str, image_size: int) -> PaliGemmaConfig:
    """google/paligemma-3b-pt-* (Gemma text) and google/paligemma2-3b-pt-* (Gemma 2 text) config values."""
    if text == "gemma":
        text_config = dict(model_type="gemma", hidden_size=2048, intermediate_size=16384, num_hidden_layers=18,
                           num_attention_heads=8, num_key_value_heads=1, vocab_size=257216)
    else:
        text_config = dict(model_type="gemma2", hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
                           num_attention_heads=8, num_key_value_heads=4, head_dim=256, vocab_size=257216)
    return PaliGemmaConfig(
        text_config=text_config, vision_config=dict(SIGLIP, image_size=image_size, patch_size=14),
        image_token_index=257152, projection_dim=text_config["hidden_size"],
    )


def hookable(adapter, config) -> list[int]:
    n_layers = config.get_text_config().num_hidden_layers
    return adapter.hookable_layers(types.SimpleNamespace(config=config), [object()] * n_layers)


# -- real checkpoints, from their configs -------------------------------------------------------
def test_gemma3_4b_layout_and_layers_from_its_config():
    config = gemma3_4b()
    adapter = Gemma3Adapter()
    # the projector pools 64x64 SigLIP patches to the same 16x16 grid the processor expands to 256 tokens
    projector = Gemma3MultiModalProjector(config)
    assert adapter.grid(config) == (projector.tokens_per_side,) * 2 == (16, 16)
    assert projector.patches_per_image // projector.kernel_size == 16
    # pan-and-scan with two crops, as the processor writes it: original image, then each crop
    nl, boi, eoi, soft = 108, config.boi_token_id, config.eoi_token_id, config.image_token_id
    image = [nl, boi] + [soft] * 256 + [eoi, nl]
    ids = [2, 105, 2364, 107] + [5000] + image + [6000] + image + [236743] + image + [3689, 106, 107]
    layout = adapter.layout(config, torch.tensor([ids]), {})
    assert layout.grids == ((Grid(0, 16, 16), Grid(256, 16, 16), Grid(512, 16, 16)),)
    first = 4 + 1 + 2  # bos, turn header, a word, "\n\n<start_of_image>"
    assert layout.positions[0, :3].tolist() == [first, first + 1, first + 2]
    assert (torch.tensor(ids)[layout.positions[0]] == soft).all()
    # 5 sliding : 1 global; the sliding layers (window 1024 < 131072 positions) are not hooked
    assert hookable(adapter, config) == [5, 11, 17, 23, 29]


@pytest.mark.parametrize(
    "text, image_size, side, layers",
    [("gemma", 224, 16, list(range(18))), ("gemma2", 448, 32, list(range(1, 26, 2))), ("gemma2", 896, 64, None)],
)
def test_paligemma_layouts_and_layers_from_their_configs(text, image_size, side, layers):
    config = paligemma(text, image_size)
    adapter = PaliGemmaAdapter()
    n = side * side
    assert config.text_config.num_image_tokens == n  # what the processor's image_seq_length is set to
    ids = [config.image_token_id] * (2 * n) + [2, 1000, 1001, 108]  # two images, <bos>, prompt, "\n"
    layout = adapter.layout(config, torch.tensor([ids]), {})
    assert layout.grids == ((Grid(0, side, side), Grid(n, side, side)),)
    assert layout.positions[0].tolist() == list(range(2 * n))
    if layers is not None:
        assert hookable(adapter, config) == layers


def test_sliding_layers_are_hooked_only_when_their_window_spans_every_position():
    def text(window, types_):
        return types.SimpleNamespace(sliding_window=window, max_position_embeddings=512, layer_types=types_)

    kinds = ["sliding_attention", "full_attention", "sliding_attention"]
    assert cache_keeping_layers(text(16, kinds), 3) == [1]
    assert cache_keeping_layers(text(512, kinds), 3) == [0, 1, 2]
    assert cache_keeping_layers(text(None, None), 3) == [0, 1, 2]
    assert cache_keeping_layers(text(16, None), 3) == []
    config = gemma3_4b()
    config.text_config.layer_types = ["sliding_attention"] * 34
    with pytest.raises(ValueError, match="its text layers are sliding_attention, with a sliding window of 1024 tokens"):
        hookable(Gemma3Adapter(), config)


def test_image_tokens_that_do_not_fill_an_image_are_refused():
    config = gemma3_4b()
    ids = torch.tensor([[2, config.boi_token_id] + [config.image_token_id] * 200 + [config.eoi_token_id]])
    with pytest.raises(ValueError, match="200 image tokens, not a multiple of 256"):
        Gemma3Adapter().layout(config, ids, {})
    config = paligemma("gemma", 224)
    with pytest.raises(ValueError, match="300 image tokens, not a multiple of 256"):
        PaliGemmaAdapter().layout(config, torch.tensor([[config.image_token_id] * 300 + [2]]), {})


# -- tiny models ---------------------------------------------------------------------------------
def test_tiny_gemma3_hooks_its_full_layers_and_sees_every_crop():
    model = _model("gemma3", "sdpa")
    text = model.config.get_text_config()
    inputs = tiny_inputs(model, 2)
    assert inputs["input_ids"].shape[1] > text.sliding_window  # the sliding layers really drop keys
    with adapt_hooks.guard(model, monitor=DriftMonitor(steer=False)) as run:
        generate(model, inputs)
    assert run.layers == [i for i, kind in enumerate(text.layer_types) if kind == "full_attention"] == [1, 3]
    side = int(model.config.mm_tokens_per_image**0.5)
    shapes = [[(g.height, g.width) for g in row] for row in run.anchor.layout.grids]
    assert shapes == [[(side, side)], [(side, side)] * 3]  # row 1: original image + 2 crops


def test_tiny_paligemma_rows_with_one_and_two_images():
    model = _model("paligemma", "sdpa")
    with adapt_hooks.guard(model, monitor=DriftMonitor(steer=False)) as run:
        generate(model, tiny_inputs(model, 2))
    layout = run.anchor.layout
    assert [len(row) for row in layout.grids] == [1, 2]
    assert layout.valid.sum(-1).tolist() == [64, 128]


def paligemma2_tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_config(tiny_paligemma.config("gemma2"), attn_implementation="eager")
    model.generation_config.pad_token_id = PAD
    model.generation_config.eos_token_id = None
    return model.eval()


def observed_and_eager(model, inputs) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per observed decode step and hooked layer: the guard's image attention, the eager kernel's
    attention probabilities, and the layout's positions and validity."""
    seen: list[list[torch.Tensor]] = []
    with adapt_hooks.guard(model, monitor=DriftMonitor(steer=False)) as run:
        interceptor = AttentionInterface._global_mapping[run._name]
        recorded = run.anchor.record  # every observed step of 4 tokens is in the anchor phase (k = 5)

        def record(slot, attention, last_layer):
            seen.append([attention])
            return recorded(slot, attention, last_layer)

        def spy(module, query, key, value, mask, **kwargs):
            before = len(seen)
            out = interceptor(module, query, key, value, mask, **kwargs)
            if len(seen) > before:
                seen[-1].append(out[1])
            return out

        run.anchor.record = record
        AttentionInterface._global_mapping[run._name] = spy
        generate(model, inputs, max_new_tokens=4)
    positions, valid = run.anchor.layout.positions, run.anchor.layout.valid
    return [(attention, probs, positions, valid) for attention, probs in seen]


@pytest.mark.parametrize("family", ["gemma3", "paligemma2"])
def test_observed_attention_is_the_kernels_attention(family):
    """Gemma 3 scales queries by query_pre_attn_scalar ** -0.5 and PaliGemma 2 softcaps the logits;
    both reach the observation, which matches the eager kernel's probabilities on the image keys."""
    model = _model("gemma3", "eager") if family == "gemma3" else paligemma2_tiny()
    attention_module = get_adapter(model).attention_modules(model)[1]  # a full-attention layer
    assert attention_module.scaling != attention_module.head_dim**-0.5
    if family == "paligemma2":
        assert attention_module.attn_logit_softcapping is not None
    steps = observed_and_eager(model, tiny_inputs(model, 2))
    assert len(steps) == 3 * 2  # 3 decode steps x 2 hooked layers
    for attention, probs, positions, valid in steps:
        expected = probs[:, :, 0].float().mean(1).gather(1, positions) * valid
        torch.testing.assert_close(attention, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("batch", [1, 2])
def test_paligemma2_eager_observe_only_is_exact_and_steering_fires(batch):
    model = paligemma2_tiny()
    inputs = tiny_inputs(model, batch)
    logits = dict(output_logits=True, return_dict_in_generate=True)
    plain = generate(model, inputs, **logits)
    with adapt_hooks.guard(model, monitor=DriftMonitor(steer=False)) as run:
        observed = generate(model, inputs, **logits)
    assert run.layers == [1, 3]
    assert torch.equal(observed.sequences, plain.sequences)
    with adapt_hooks.guard(model, monitor=DriftMonitor(tau=1e9, alpha=2.0)) as run:
        steered = generate(model, inputs, **logits)
    k = run.anchor.k
    assert run.monitor.intervention_rate == 1.0
    assert (steered.logits[k + 1] - plain.logits[k + 1]).abs().max() > 1e-3
