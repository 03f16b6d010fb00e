"""Molmo2: the layout of the released config on the real processor's image and video prompts
(its own string builders, one id per token), with and without ``image_grids``."""

from __future__ import annotations

import re

import pytest
import torch

from adapt_hooks.adapters.molmo2 import Molmo2Adapter
from adapt_hooks.tiny import installed

pytestmark = pytest.mark.skipif(not installed("molmo2"), reason="transformers has no Molmo2")

SPECIALS = ["<im_patch>", "<im_col>", "<im_start>", "<low_res_im_start>", "<im_end>", "<frame_start>", "<frame_end>"]


def processor():
    """The real Molmo2Processor's prompt builders, without its tokenizer and image processor."""
    from transformers import Molmo2Processor

    proc = Molmo2Processor.__new__(Molmo2Processor)
    proc.image_use_col_tokens, proc.use_single_crop_col_tokens, proc.use_single_crop_start_token = True, None, True
    proc.video_use_col_tokens, proc.use_frame_special_tokens = False, True
    return proc


def tokenize(config, text: str) -> torch.Tensor:
    """Special tokens at the released config's ids; every other piece of text one id."""
    ids = dict(zip(SPECIALS, (config.image_patch_id, 0, config.image_start_token_id, config.low_res_image_start_token_id,
                              config.image_end_token_id, config.frame_start_token_id, config.frame_end_token_id)))  # fmt: skip
    pieces = [p for p in re.split(r"(<[^>]+>)", text) if p]
    return torch.tensor([[ids.get(p, 1) for p in pieces]])


@pytest.mark.parametrize("with_grids", [True, False])
def test_real_processor_image_prompt_gives_global_and_high_res_grids(with_grids):
    from transformers import Molmo2Config

    config = Molmo2Config()
    grids = [[14, 14, 20, 27], [14, 14, 14, 14]]  # 378 px crops of 27x27 patches pooled 2x2
    proc = processor()
    text = "".join("<|image|> " + proc.replace_image_token({"image_grids": grids}, i) for i in range(2)) + " describe"
    ids = tokenize(config, text)
    inputs = {"image_grids": torch.tensor(grids)} if with_grids else {}
    layout = Molmo2Adapter().layout(config, ids, inputs)
    assert [(g.height, g.width) for g in layout.grids[0]] == [(14, 14), (20, 27), (14, 14), (14, 14)]
    assert layout.positions[0].tolist() == torch.nonzero(ids[0] == config.image_patch_id).flatten().tolist()


def test_real_processor_video_prompt_gives_one_grid_per_frame():
    from transformers import Molmo2Config

    config = Molmo2Config()
    text = processor().get_video_string(torch.tensor([3, 9, 9]), [0.0, 0.5, 1.0])  # 3 frames pooled 3x3 to 9x9
    layout = Molmo2Adapter().layout(config, tokenize(config, text), {})
    assert [(g.height, g.width) for g in layout.grids[0]] == [(9, 9)] * 3


@pytest.mark.parametrize("col_tokens", [True, False])
def test_video_grids_give_each_frame_its_shape(col_tokens):
    from transformers import Molmo2Config

    config = Molmo2Config()
    proc = processor()
    proc.video_use_col_tokens = col_tokens
    text = proc.get_video_string(torch.tensor([2, 6, 8]), [0.0, 0.5])
    layout = Molmo2Adapter().layout(config, tokenize(config, text), {"video_grids": torch.tensor([[2, 6, 8]])})
    assert [(g.height, g.width) for g in layout.grids[0]] == [(6, 8)] * 2
