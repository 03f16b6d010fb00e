"""HunYuan-VL and Granite 4 Vision layouts at the real checkpoints' sizes, against the processors'
own token counts (no weights)."""

from __future__ import annotations

import types

import torch
from transformers import CLIPVisionConfig, Granite4VisionConfig, HunYuanVLConfig
from transformers.models.granite4_vision.processing_granite4_vision import Granite4VisionProcessor
from transformers.models.hunyuan_vl.processing_hunyuan_vl import HunYuanVLProcessor

from adapt_hooks.adapters.granite4_vision import Granite4VisionAdapter
from adapt_hooks.adapters.hunyuan_vl import HunYuanVLAdapter
from adapt_hooks.layout import Grid

IMAGE, TEXT = 3, 9


def test_hunyuan_patch_tokens_are_the_keys_and_begin_newline_end_slots_are_not():
    config = HunYuanVLConfig(image_token_id=IMAGE)  # HunyuanOCR: patch 16, merged 2x2
    thw = torch.tensor([[1, 32, 48], [1, 8, 4]])
    fake = types.SimpleNamespace(
        image_token="<I>", cat_extra_token=True, image_processor=types.SimpleNamespace(spatial_patch_size=1, merge_size=2)
    )
    counts = [len(HunYuanVLProcessor.replace_image_token(fake, {"image_grid_thw": thw}, i)) // 3 for i in range(2)]
    assert counts == [16 * 25 + 2, 4 * 3 + 2]
    ids = [TEXT] + [IMAGE] * counts[0] + [TEXT] + [IMAGE] * counts[1] + [TEXT]
    layout = HunYuanVLAdapter().layout(config, torch.tensor([ids]), {"image_grid_thw": thw})
    assert layout.grids == ((Grid(0, 16, 24), Grid(16 * 24, 4, 2)),)
    keys = layout.positions[0].tolist()
    first = 1 + 1  # after the text token and the begin slot
    assert keys[:25] == list(range(first, first + 24)) + [first + 25]  # the newline slot after 24 patches is skipped
    assert keys[16 * 24 - 1] == first + 15 * 25 + 23 and keys[16 * 24] == 1 + counts[0] + 1 + 1


def test_hunyuan_beams_of_old_transformers_repeat_each_image_in_place():
    config = HunYuanVLConfig(image_token_id=IMAGE)
    a, b, c = [1, 8, 8], [1, 8, 12], [1, 4, 8]  # row 0: a; row 1: b and c; two beams each
    n = [4 * 5 + 2, 4 * 5 + 2, 4 * 7 + 2 + 2 * 5 + 2, 4 * 7 + 2 + 2 * 5 + 2]
    grids = HunYuanVLAdapter().row_grids(config, None, n, {"image_grid_thw": torch.tensor([a, a, b, b, c, c])})
    assert [[(g.height, g.width) for g in row] for row in grids] == [[(4, 4)], [(4, 4)], [(4, 6), (2, 4)], [(4, 6), (2, 4)]]


def test_granite_counts_match_the_processor_at_the_downsampled_size():
    config = Granite4VisionConfig(
        vision_config=CLIPVisionConfig(hidden_size=64, num_attention_heads=4, image_size=384, patch_size=16), image_token_index=IMAGE,
        downsample_rate="4/8", deepstack_layer_map=[[-1, 0]],
    )
    config.image_grid_pinpoints = [[384, 768], [768, 384], [768, 768], [1152, 384], [384, 1152]]
    fake = types.SimpleNamespace(
        image_processor=types.SimpleNamespace(image_grid_pinpoints=config.image_grid_pinpoints), patch_size=16,
        downsample_rate="4/8", num_additional_image_tokens=0,
    )
    fake._get_unpadded_features = types.MethodType(Granite4VisionProcessor._get_unpadded_features, fake)
    adapter = Granite4VisionAdapter()
    assert adapter.base_side(config) == 12
    for size in [(500, 300), (300, 1000), (768, 768)]:
        expected = Granite4VisionProcessor._get_number_of_features(fake, *size, 384, 384)
        rows, cols = adapter.tile_grid(config, *size)
        assert 12 * 12 + rows * (cols + 1) == expected
