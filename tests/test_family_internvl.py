"""InternVL layouts at the real checkpoints' sizes, from configs and the processor's own token
layout (no weights): 16x16 per 448 px tile, one grid per tile, thumbnail included."""

from __future__ import annotations

import re
import types

import pytest
import torch
from transformers import InternVLConfig
from transformers.models.internvl.processing_internvl import InternVLProcessor

from adapt_hooks.layout import Grid
from adapt_hooks.adapters.internvl import InternVLAdapter

START, END, CONTEXT, TEXT = 1, 2, 3, 9


def _processor_ids(tiles: list[int], seq_length: int) -> list[int]:
    """Token ids of one prompt holding an image per entry of ``tiles``, written by the processor."""
    fake = types.SimpleNamespace(
        start_image_token="<img>", end_image_token="</img>", image_token="<C>", image_seq_length=seq_length
    )
    text = "x".join(InternVLProcessor.replace_image_token(fake, {"num_patches": tiles}, i) for i in range(len(tiles)))
    vocab = {"<img>": START, "</img>": END, "<C>": CONTEXT}
    return [vocab.get(piece, TEXT) for piece in _split(text, vocab)]


def _split(text: str, vocab: dict[str, int]) -> list[str]:
    pattern = "|".join(map(re.escape, sorted(vocab, key=len, reverse=True)))
    return re.findall(f"{pattern}|.", text)


def test_real_config_gives_16x16_per_tile_like_the_processor():
    config = InternVLConfig(image_token_id=CONTEXT)  # InternVL3 defaults: 448 px tiles, patch 14, ratio 0.5
    adapter = InternVLAdapter()
    assert adapter.grid(config) == (16, 16) and config.image_seq_length == 256
    ids = _processor_ids([7], config.image_seq_length)  # 6 crops + thumbnail
    layout = adapter.layout(config, torch.tensor([[TEXT] + ids]), {})
    assert layout.grids == (tuple(Grid(256 * i, 16, 16) for i in range(7)),)
    assert layout.positions[0, 0] == 2 and layout.positions[0, -1] == 1 + 1 + 7 * 256 - 1


def test_several_images_and_rows_with_padding():
    config = InternVLConfig(image_token_id=CONTEXT)
    row0 = _processor_ids([1, 3], 256)  # two images in one prompt: 1 tile, then 2 crops + thumbnail
    row1 = _processor_ids([1], 256)
    ids = torch.zeros(2, len(row0), dtype=torch.long)
    ids[0], ids[1, len(row0) - len(row1) :] = torch.tensor(row0), torch.tensor(row1)
    layout = InternVLAdapter().layout(config, ids, {})
    assert [len(g) for g in layout.grids] == [4, 1]
    assert layout.valid.sum(-1).tolist() == [4 * 256, 256]
    assert int(layout.positions[1, 0]) == len(row0) - len(row1) + 1  # after the left padding and <img>


def _tiny_with_text(text_config, attn: str = "eager"):
    """The tiny InternVL with another text backbone, as InternVL3 / InternVL3.5 checkpoints bring
    (Qwen2 in the battery's tiny model; Qwen3, Qwen3-MoE and GPT-OSS here)."""
    from transformers import AutoModelForImageTextToText

    from adapt_hooks.tiny import internvl

    base = internvl.config()
    config = InternVLConfig(
        vision_config=base.vision_config, text_config=text_config, image_token_id=base.image_token_id,
        image_seq_length=base.image_seq_length, downsample_ratio=base.downsample_ratio,
        vision_feature_select_strategy="default", vision_feature_layer=-1, pad_token_id=base.pad_token_id,
    )
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_config(config, attn_implementation=attn).eval()
    model.generation_config.pad_token_id, model.generation_config.eos_token_id = base.pad_token_id, None
    return model, internvl.inputs(model, 2, True, torch.Generator().manual_seed(0))


def _text_configs():
    from transformers import GptOssConfig, Qwen3Config, Qwen3MoeConfig

    from adapt_hooks.tiny._common import TEXT

    moe = dict(num_experts_per_tok=2, head_dim=8)
    return {
        "qwen3": (Qwen3Config(**TEXT, head_dim=8), [0, 1, 2, 3]),
        "qwen3_moe": (Qwen3MoeConfig(**TEXT, **moe, num_experts=4, moe_intermediate_size=32), [0, 1, 2, 3]),
        # InternVL3.5-GPT-OSS: sliding layers (a 128-token window in the real model) alternate with full ones
        "gpt_oss": (GptOssConfig(**TEXT, **moe, num_local_experts=4, sliding_window=8,
                                 layer_types=["sliding_attention", "full_attention"] * 2), [1, 3]),
    }  # fmt: skip


@pytest.mark.parametrize("backbone", ["qwen3", "qwen3_moe", "gpt_oss"])
def test_newer_text_backbones_observe_exactly_and_steer(backbone):
    import adapt_hooks
    from adapt_hooks import Anchor, DriftMonitor

    text_config, hooked = _text_configs()[backbone]
    model, inputs = _tiny_with_text(text_config)
    expected = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    with adapt_hooks.guard(model, monitor=DriftMonitor(steer=False)) as run:
        got = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    assert torch.equal(got, expected) and run.layers == hooked
    assert run.anchor.layout.grid_shapes == (((6, 6),), ((6, 6),) * 3)
    with adapt_hooks.guard(model, anchor=Anchor(k=3), monitor=DriftMonitor(tau=1e9, alpha=2.0)) as run:
        model.generate(**inputs, max_new_tokens=6, do_sample=False)
    assert run.monitor.intervention_rate == 1.0
