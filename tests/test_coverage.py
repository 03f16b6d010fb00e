"""Coverage of transformers' image-text-to-text model types: every installed type classified, the
report, supported_models(), the README and docs/adapters.md agreeing; the generic fallback; hybrid
decoders hooked on their full-attention layers only."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import adapt_hooks
from adapt_hooks import DriftMonitor, compat, coverage
from adapt_hooks.adapters import GenericAdapter, get_adapter
from adapt_hooks.tiny import model_types, tiny_inputs, tiny_model

from .conftest import generate

ROOT = Path(__file__).resolve().parents[1]


def test_every_installed_model_type_is_classified():
    rows = coverage.report()
    assert {r.model_type for r in rows} == set(coverage.image_text_to_text_types())
    unclassified = [r.model_type for r in rows if r.status == "unclassified"]
    assert not unclassified, f"transformers {compat.INSTALLED} adds model types the coverage report does not classify: {unclassified}"


def test_supported_means_an_adapter_and_the_battery():
    rows = {r.model_type: r for r in coverage.report()}
    supported = {t for t, r in rows.items() if r.status == "supported"}
    assert supported <= set(adapt_hooks.supported_models()) and supported <= set(model_types())
    assert not (set(coverage.GENERIC_ONLY) | set(coverage.NOT_APPLICABLE)) & set(adapt_hooks.supported_models())
    assert not set(coverage.GENERIC_ONLY) & set(coverage.NOT_APPLICABLE)


def test_readme_and_adapters_page_list_every_supported_model_type():
    readme = (ROOT / "README.md").read_text()
    listed = set(re.findall(r"`([a-z0-9_\-.]+)`", readme.split("## Supported models")[1].split("\n## ")[0]))
    assert set(adapt_hooks.supported_models()) <= listed, set(adapt_hooks.supported_models()) - listed
    page = (ROOT / "docs" / "adapters.md").read_text()
    table = page.split("<!-- coverage:start -->")[1].split("<!-- coverage:end -->")[0]
    version = re.search(r"transformers (\d+\.\d+\.\d+)", table).group(1)
    if version == compat.INSTALLED:  # the table is generated on the newest tested release
        assert table.strip().endswith(coverage.markdown(coverage.report()).strip())


def test_an_unknown_model_type_names_the_generic_fallback():
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1))  # fmt: skip
    with pytest.raises(ValueError, match=r'no adapter for model_type .llama.*adapter="generic"'):
        adapt_hooks.guard(model)
    with pytest.raises(ValueError, match="no image placeholder id"):
        adapt_hooks.guard(model, adapter="generic")
    with pytest.raises(ValueError, match='adapter= must be None, "generic"'):
        adapt_hooks.guard(model, adapter="llava")


@pytest.mark.parametrize("family", ["llava", "qwen2_vl", "gemma3", "deepseek_vl", "mistral3"])
def test_the_generic_adapter_watches_exactly_and_places_what_it_can(family):
    model = tiny_model(family)
    inputs = tiny_inputs(model, 2)
    expected = generate(model, inputs)
    with adapt_hooks.guard(model, monitor=DriftMonitor(steer=False), adapter="generic") as generic:
        got = generate(model, inputs)
    assert torch.equal(got, expected)
    with adapt_hooks.guard(model, monitor=DriftMonitor(steer=False)) as own:
        generate(model, inputs)
    assert torch.equal(generic.anchor.layout.positions, own.anchor.layout.positions)  # the same image keys
    shapes, own_shapes = generic.anchor.layout.grid_shapes, own.anchor.layout.grid_shapes
    if family == "mistral3":  # rows of [IMG_BREAK]-separated patches, not a square: one row-major sequence
        assert all(row == ((1, sum(h * w for h, w in theirs)),) for row, theirs in zip(shapes, own_shapes))
    else:  # a fixed square per image, or grids from the M-RoPE positions: the family's own grids
        assert shapes == own_shapes
    with adapt_hooks.guard(model, monitor=DriftMonitor(tau=1e9), adapter="generic") as steered:
        generate(model, inputs, max_new_tokens=10)
    assert steered.monitor.intervention_rate == 1.0


def test_a_registered_generic_adapter_serves_a_model_type_by_default():
    model = tiny_model("llava")
    model.config.model_type = "my_vlm"  # a family adapt-hooks has no adapter for
    try:
        with pytest.raises(ValueError, match="no adapter for model_type 'my_vlm'"):
            adapt_hooks.guard(model)
        adapter = GenericAdapter()
        adapter.model_types = ("my_vlm",)
        adapt_hooks.register_adapter(adapter)
        assert isinstance(get_adapter(model), GenericAdapter)
    finally:
        from adapt_hooks.adapters import _REGISTRY

        _REGISTRY.pop("my_vlm", None)
        model.config.model_type = "llava"


def test_a_hybrid_decoder_is_hooked_on_its_full_attention_layers_only():
    model = tiny_model("qwen3_5")
    kinds = model.config.get_text_config().layer_types
    with adapt_hooks.guard(model, monitor=DriftMonitor(steer=False)) as run:
        generate(model, tiny_inputs(model, 1))
    assert run.layers == [i for i, kind in enumerate(kinds) if kind == "full_attention"] == [1, 3]
    with pytest.raises(ValueError, match=r"hookable layers of qwen3_5: 1, 3; got \[0\]"):
        adapt_hooks.guard(model, layers=[0])


def test_a_decoder_without_a_full_attention_layer_is_refused_clearly():
    model = tiny_model("qwen3_5")
    text = model.config.get_text_config()
    kinds = list(text.layer_types)
    text.layer_types = ["linear_attention"] * len(kinds)
    try:
        with pytest.raises(ValueError, match="its text layers are linear_attention .*adapt-hooks cannot watch this model"):
            adapt_hooks.guard(model)
    finally:
        text.layer_types = kinds
