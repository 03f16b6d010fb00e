"""Idefics3 / SmolVLM: the layout of real-size configs on prompts built by the real processor
(a word-level tokenizer with the real special tokens; no download), and tiles per row under generate."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import adapt_hooks
from adapt_hooks import DriftMonitor
from adapt_hooks.adapters import get_adapter
from adapt_hooks.layout import Grid
from adapt_hooks.adapters.idefics3 import Idefics3Adapter
from adapt_hooks.tiny import model_types, tiny_inputs

from .conftest import _model, generate

SPECIALS = ["<fake_token_around_image>", "<image>", "<global-img>", "<end_of_utterance>"] + [
    f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)
]

#: checkpoint -> (model_type, vision image_size, patch_size, scale_factor, tile side)
REAL = {
    "HuggingFaceM4/Idefics3-8B-Llama3": ("idefics3", 364, 14, 2, 13),
    "HuggingFaceTB/SmolVLM-Instruct": ("idefics3", 384, 14, 3, 9),
    "HuggingFaceTB/SmolVLM2-256M-Video-Instruct": ("smolvlm", 512, 16, 4, 8),
}


def real_config(model_type: str, image_size: int, patch: int, scale: int):
    from transformers import Idefics3Config, SmolVLMConfig

    config_cls = Idefics3Config if model_type == "idefics3" else SmolVLMConfig
    return config_cls(vision_config=dict(image_size=image_size, patch_size=patch), scale_factor=scale)


def processor(config, image_seq_len: int):
    """The real Idefics3 processor (SmolVLM's builds the same image prompt) over a word-level tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import Idefics3Processor, PreTrainedTokenizerFast
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    vocab = {t: i for i, t in enumerate(["<pad>", "[UNK]", "\n", "describe", "compare"] + SPECIALS)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split("\n", "isolated"), pre_tokenizers.Split(" ", "removed")]
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", unk_token="[UNK]")
    fast.add_special_tokens({"additional_special_tokens": SPECIALS})
    tile = config.vision_config.image_size
    images = Idefics3ImageProcessorPil(max_image_size={"longest_edge": tile}, size={"longest_edge": 4 * tile})
    return Idefics3Processor(image_processor=images, tokenizer=fast, image_seq_len=image_seq_len)


@pytest.mark.parametrize("checkpoint", list(REAL))
def test_real_processor_prompt_gives_one_grid_per_tile(checkpoint):
    model_type, image_size, patch, scale, side = REAL[checkpoint]
    config = real_config(model_type, image_size, patch, scale)
    assert Idefics3Adapter.tile_side(config) == side
    proc = processor(config, side * side)
    rng = np.random.default_rng(0)
    wide = rng.integers(0, 255, (image_size, 3 * image_size, 3), dtype=np.uint8)
    tall = rng.integers(0, 255, (2 * image_size, image_size // 2, 3), dtype=np.uint8)
    out = proc(text=["<image>\ncompare<image>\ndescribe"], images=[[wide, tall]], return_tensors="pt")
    ids = out["input_ids"]
    config.image_token_id = proc.image_token_id  # as in a checkpoint, whose config matches its tokenizer
    layout = Idefics3Adapter().layout(config, ids, {})

    n_tiles = int((out["pixel_values"][0].flatten(1) != 0).any(-1).sum())  # tiles + one global image per image
    assert layout.grids[0] == tuple(Grid(i * side * side, side, side) for i in range(n_tiles))
    # every <image> token is a key, no separator is
    assert layout.positions[0].tolist() == torch.nonzero(ids[0] == proc.image_token_id).flatten().tolist()
    # each grid opens right after its <row_r_col_c> or <global-img> tag
    vocab = {i: t for t, i in proc.tokenizer.get_vocab().items()}
    openers = [vocab[int(ids[0, layout.positions[0, g.offset] - 1])] for g in layout.grids[0]]
    assert openers.count("<global-img>") == 2
    assert all(t.startswith("<row_") or t == "<global-img>" for t in openers)


def test_image_tokens_that_are_not_whole_tiles_are_refused():
    config = real_config("idefics3", 364, 14, 2)
    ids = torch.tensor([[0] + [config.image_token_id] * 170])
    with pytest.raises(ValueError, match="170 image tokens, not a multiple of 169"):
        Idefics3Adapter().layout(config, ids, {})


@pytest.mark.skipif(not {"idefics3", "smolvlm"} & set(model_types()), reason="no tiny Idefics3/SmolVLM model")
def test_generate_layout_has_each_rows_tiles_and_global_image():
    family = "idefics3" if "idefics3" in model_types() else "smolvlm"
    model = _model(family, "sdpa")
    inputs = tiny_inputs(model, 2)
    side = Idefics3Adapter.tile_side(model.config)
    with adapt_hooks.guard(model, monitor=DriftMonitor(steer=False)) as run:
        generate(model, inputs)
    assert isinstance(get_adapter(model), Idefics3Adapter)
    # row 0: 2x2 tiles + global, row 1: 1x2 tiles + global (see adapt_hooks.tiny.idefics3)
    assert [len(g) for g in run.anchor.layout.grids] == [5, 3]
    assert all((g.height, g.width) == (side, side) for row in run.anchor.layout.grids for g in row)
