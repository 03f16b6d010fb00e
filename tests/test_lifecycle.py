"""Install / restore: exact restore on exit and on failure, nesting and re-entry, clear errors,
hand-written decoding loops, and a decode path free of host syncs."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM
from transformers.masking_utils import AttentionMaskInterface
from transformers.modeling_utils import AttentionInterface

import adapt_hooks
from adapt_hooks import Anchor, DriftMonitor
from adapt_hooks import Guard
from adapt_hooks.tiny import model_types, tiny_inputs, tiny_model

from .conftest import _model, generate
from .references import forbid_host_reads


def snapshot(model):
    """Everything a guard may touch: implementations, hooks, module attributes, registries.

    transformers installs its own output-capturing hooks on a model's first forward call, so the
    model runs once, unguarded, before the picture is taken."""
    if not getattr(model, "_warmed_for_snapshot", False):
        model(**tiny_inputs(model, 1))
        model._warmed_for_snapshot = True
    return {
        "impl": [c._attn_implementation for c in (model.config, model.config.get_text_config(), model.config.vision_config)],
        "hooks": [
            (name, len(m._forward_pre_hooks), len(m._forward_hooks), sorted(vars(m)))
            for name, m in model.named_modules()
        ],
        "attention_registry": sorted(AttentionInterface._global_mapping),
        "mask_registry": sorted(AttentionMaskInterface._global_mapping),
    }


def test_exit_restores_everything(model):
    before = snapshot(model)
    with adapt_hooks.guard(model) as run:
        assert model.config.get_text_config()._attn_implementation == run._name
        assert snapshot(model) != before
        generate(model, tiny_inputs(model, 1))
    assert snapshot(model) == before


def test_exception_inside_the_block_restores(llava):
    before = snapshot(llava)
    with pytest.raises(KeyError, match="boom"):
        with adapt_hooks.guard(llava):
            generate(llava, tiny_inputs(llava, 1))
            raise KeyError("boom")
    assert snapshot(llava) == before


def test_failure_while_installing_restores(llava, monkeypatch):
    before = snapshot(llava)

    def broken(*args, **kwargs):
        raise RuntimeError("hook registration failed")

    monkeypatch.setattr(type(llava), "register_forward_pre_hook", broken)
    with pytest.raises(RuntimeError, match="hook registration failed"):
        with adapt_hooks.guard(llava):
            pass
    monkeypatch.undo()
    assert snapshot(llava) == before


def test_nested_guards_inner_wins_outer_restored(llava):
    inputs = tiny_inputs(llava, 2)
    logits = dict(output_logits=True, return_dict_in_generate=True)
    plain = generate(llava, inputs, **logits)
    before = snapshot(llava)
    with adapt_hooks.guard(llava, monitor=DriftMonitor(steer=False)) as outer:
        with adapt_hooks.guard(llava, monitor=DriftMonitor(tau=1e9, alpha=3.0)) as inner:
            steered = generate(llava, inputs, **logits)
        assert llava.config.get_text_config()._attn_implementation == outer._name
        assert inner.monitor.intervention_rate == 1.0
        assert outer.monitor.history == {}  # the inner guard saw the decode steps, not the outer
        again = generate(llava, inputs, **logits)  # outer alone again: observe-only
        assert outer.monitor.history["amc"].shape[0] == 9
    assert (steered.logits[-1] - plain.logits[-1]).abs().max() > 1e-3
    assert torch.equal(again.sequences, plain.sequences)
    assert snapshot(llava) == before


def test_guard_can_be_reentered_but_not_while_active(llava):
    inputs = tiny_inputs(llava, 1)
    run = adapt_hooks.guard(llava, monitor=DriftMonitor(tau=1e9))
    results = []
    for _ in range(2):
        with run:
            results.append(generate(llava, inputs))
            with pytest.raises(RuntimeError, match="already active"):
                run.__enter__()
    assert torch.equal(results[0], results[1])
    assert llava.config.get_text_config()._attn_implementation == "eager"


def test_hand_written_decoding_loop_matches_generate(model):
    """Prefill then one-token forward calls with past_key_values: same tokens, same steering."""
    inputs = tiny_inputs(model, 1)
    monitor = DriftMonitor(tau=1e9, alpha=2.0)
    with adapt_hooks.guard(model, monitor=monitor) as run:
        expected = generate(model, inputs, max_new_tokens=9)
        expected_rate = run.monitor.intervention_rate
    with adapt_hooks.guard(model, monitor=DriftMonitor(tau=1e9, alpha=2.0)) as run:
        with torch.no_grad():
            # the caller's own cache: Granite 4 Vision's text model makes none for a call without one
            cache = DynamicCache(config=model.config.get_text_config())
            out = model(**inputs, past_key_values=cache, use_cache=True)
            tokens = [out.logits[:, -1].argmax(-1, keepdim=True)]
            for _ in range(8):  # one row, no padding: decode calls need no attention mask
                out = model(input_ids=tokens[-1], past_key_values=out.past_key_values, use_cache=True)
                tokens.append(out.logits[:, -1].argmax(-1, keepdim=True))
    assert torch.equal(torch.cat(tokens, 1), expected[:, inputs["input_ids"].shape[1] :])
    assert run.monitor.intervention_rate == expected_rate == 1.0


def test_decode_path_never_syncs_with_the_host(model, monkeypatch):
    """While a decode step runs through the interceptor, reading a tensor's value on the host fails."""
    inputs = tiny_inputs(model, 2)
    in_decode = [False]


    forbid_host_reads(monkeypatch, in_decode, "the decode path")
    with adapt_hooks.guard(model, monitor=DriftMonitor(tau=0.9)) as run:
        interceptor = AttentionInterface._global_mapping[run._name]

        def watched(module, query, *args, **kwargs):
            in_decode[0] = query.shape[2] == 1
            try:
                return interceptor(module, query, *args, **kwargs)
            finally:
                in_decode[0] = False

        AttentionInterface._global_mapping[run._name] = watched
        generate(model, inputs, max_new_tokens=10)
    monkeypatch.undo()
    assert run.anchor.weights is not None and len(run.monitor.history["amc"]) == 9


def test_state_is_bounded_without_history(llava):
    inputs = tiny_inputs(llava, 1)
    sizes = []
    for new_tokens in (12, 40):
        with adapt_hooks.guard(llava, monitor=DriftMonitor(tau=2.0, history=False)) as run:
            generate(llava, inputs, max_new_tokens=new_tokens)
        monitor = run.monitor
        assert monitor.history == {} and monitor._rows == []
        assert 0.0 < monitor.intervention_rate <= 1.0
        state = monitor._state_tensors() + [t for m in run.methods for t in m.state_tensors()]
        sizes.append(sum(t.numel() for t in state))
    layers, (batch, n), prompt = len(run.layers), run.anchor.weights.shape, inputs["input_ids"].shape[1]
    assert sizes[0] == sizes[1] <= batch * (layers * (4 * n + 4) + prompt)  # O(layers x image tokens), flat in steps


# -- errors ---------------------------------------------------------------------------------
def test_unsupported_model_names_type_and_supported():
    config = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    supported = adapt_hooks.supported_models()
    with pytest.raises(ValueError, match=rf"'llama'.*Supported model types: {', '.join(supported)}\."):
        adapt_hooks.guard(LlamaForCausalLM(config))
    assert supported == sorted(supported) and {"llava", "qwen2_vl", "qwen2_5_vl"} <= set(supported)
    assert set(supported) >= set(model_types())  # every tiny family (the battery) has its adapter


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: Anchor(k=0), "positive integer"),
        (lambda: Anchor(k=2.5), "positive integer"),
        (lambda: DriftMonitor(tau=float("nan")), "tau"),
        (lambda: DriftMonitor(tau=-0.1), "tau"),
        (lambda: DriftMonitor(alpha=float("inf")), "alpha"),
        (lambda: DriftMonitor(eps=0), "eps"),
        (lambda: DriftMonitor(normalize="max"), "normalize"),
        (lambda: DriftMonitor(steering="boost"), "steering"),
        (lambda: Anchor(fusion="mean"), "fusion"),
    ],
)
def test_bad_settings_are_rejected(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_guard_arguments(llava):
    with pytest.raises(ValueError, match=r"hookable layers of llava: 0\.\.3; got \[7\]"):
        adapt_hooks.guard(llava, layers=[2, 7])
    with pytest.raises(ValueError, match="nothing"):
        adapt_hooks.guard(llava, layers=[])
    with pytest.raises(TypeError, match="Anchor"):
        adapt_hooks.guard(llava, anchor=DriftMonitor())
    with pytest.raises(TypeError, match="transformers model"):
        adapt_hooks.guard("llava")


def test_unsupported_attention_implementation_is_refused_and_restored():
    model = tiny_model("llava", "sdpa")
    snapshot(model)  # warm up while the model can still run
    text = model.config.get_text_config()
    text._attn_implementation = "flash_attention_2"
    before = snapshot(model)
    with pytest.raises(ValueError, match="set_attn_implementation\\('sdpa'\\)"):
        with adapt_hooks.guard(model):
            pass
    assert snapshot(model) == before


def test_image_tokens_that_do_not_match_the_images_are_refused():
    model = _model("qwen2_vl", "sdpa")
    inputs = tiny_inputs(model, 1)
    inputs["image_grid_thw"] = torch.tensor([[1, 8, 8], [1, 8, 8]])
    with pytest.raises(ValueError, match="image_grid_thw describes 2 images"):
        with adapt_hooks.guard(model):
            model(**inputs)
    llava = _model("llava", "sdpa")
    ids = tiny_inputs(llava, 1)["input_ids"][:, :-40]  # cut into the image tokens
    with pytest.raises(ValueError, match="not a multiple of 64"):
        with adapt_hooks.guard(llava):
            llava(input_ids=ids)
