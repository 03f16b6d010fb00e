"""Mistral Large 4: every DSA layer is hooked, and the indexer's top-k pick that transformers hands
a custom-named attention function as ``indices=`` is folded into the mask as eager/sdpa get it."""

from __future__ import annotations

import types

import pytest
import torch

from adapt_hooks import compat
from adapt_hooks.adapters.mistral_large4 import MistralLarge4Adapter
from adapt_hooks.tiny import installed

pytestmark = pytest.mark.skipif(not installed("mistral_large4"), reason="transformers has no Mistral Large 4")


def test_every_indexed_attention_layer_is_hooked():
    from transformers import MistralLarge4Config

    config = MistralLarge4Config()  # Mistral-Large-4: 72 indexed_attention layers, top-2048 keys per query
    model = types.SimpleNamespace(config=config)
    assert set(config.text_config.layer_types) == {"indexed_attention"}
    assert MistralLarge4Adapter().hookable_layers(model, [object()] * 72) == list(range(72))


@pytest.mark.parametrize("boolean", [True, False])
def test_the_indexer_pick_is_folded_into_the_mask(boolean):
    query, key = torch.zeros(1, 2, 3, 4), torch.zeros(1, 2, 5, 4)
    causal = torch.ones(3, 5, dtype=torch.bool).tril(2)[None, None]
    mask = causal if boolean else torch.zeros(causal.shape).masked_fill(~causal, torch.finfo(torch.float32).min)
    indices = torch.tensor([[[0, 1], [1, 3], [2, 4]]], dtype=torch.int32)
    folded, kwargs = compat.index_mask(query, key, mask, {"indices": indices, "scaling": 0.5})
    picked = torch.zeros(1, 1, 3, 5, dtype=torch.bool).scatter(-1, indices.long()[:, None], True)
    visible = folded if boolean else folded == 0
    assert torch.equal(visible, causal & picked) and kwargs == {"indices": None, "scaling": 0.5}
    assert compat.index_mask(query, key, mask, {"indices": None})[0] is mask


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_a_pick_that_leaves_keys_out_is_followed(attn):
    from transformers import AutoModelForImageTextToText

    import adapt_hooks
    from adapt_hooks import DriftMonitor
    from adapt_hooks.tiny import PAD, mistral_large4, tiny_inputs

    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_config(mistral_large4.config(index_topk=32), attn_implementation=attn).eval()
    mistral_large4.prepare(model)
    model.generation_config.pad_token_id, model.generation_config.eos_token_id = PAD, None
    inputs = tiny_inputs(model, 2)  # 42 tokens a row: the pick leaves keys out from the 33rd on
    expected = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    with adapt_hooks.guard(model, monitor=DriftMonitor(steer=False)):
        assert torch.equal(model.generate(**inputs, max_new_tokens=8, do_sample=False), expected)
    with adapt_hooks.guard(model, monitor=DriftMonitor(tau=2.0)) as run:
        model.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert run.monitor.intervention_rate > 0
