"""LLaVA-NeXT / LLaVA-OneVision layouts: real-size configs against the processors' token counts,
``image_sizes`` against encoded features (what ``generate`` passes), multi-image OneVision prompts."""

from __future__ import annotations

import types
from functools import partial

import pytest
import torch

import adapt_hooks
from adapt_hooks import DriftMonitor
from adapt_hooks.adapters.llava_next import LlavaNextAdapter, LlavaOnevisionAdapter
from adapt_hooks.tiny import llava_next as tiny
from adapt_hooks.tiny import tiny_inputs, tiny_model

from .conftest import generate

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

IMG = 3
ADAPTERS = {"llava_next": LlavaNextAdapter(), "llava_onevision": LlavaOnevisionAdapter()}
SIZES = [(480, 640), (1000, 300), (336, 336), (800, 1200), (200, 1800), (1500, 1400)]


def _processor_count(processor_cls, config, height: int, width: int, **attributes) -> int:
    """Image tokens of one image as the real processor counts them (built without a tokenizer)."""
    pinpoints = types.SimpleNamespace(image_grid_pinpoints=config.image_grid_pinpoints)
    fake = types.SimpleNamespace(image_processor=pinpoints)
    fake.__dict__.update(attributes)
    fake._get_unpadded_features = partial(processor_cls._get_unpadded_features, fake)
    tile = config.vision_config.image_size
    return processor_cls._get_number_of_features(fake, height, width, tile, tile)


def _layout(adapter, config, counts: list[int], inputs: dict):
    ids = torch.tensor([[1] + [IMG] * n + [20] for n in counts])
    return adapter.layout(config, ids, inputs)


@pytest.mark.parametrize("size", SIZES)
def test_llava_next_real_config_matches_the_processor(size):
    from transformers import LlavaNextConfig
    from transformers.models.llava_next.processing_llava_next import LlavaNextProcessor

    config = LlavaNextConfig(image_token_index=IMG)  # llava-v1.6: CLIP-L/14 at 336 px, 5 pinpoints
    n = _processor_count(LlavaNextProcessor, config, *size, patch_size=14, num_additional_image_tokens=1) - 1
    layout = _layout(LlavaNextAdapter(), config, [n], {"image_sizes": torch.tensor([size])})
    base, tiles = layout.grids[0]
    assert (base.height, base.width) == (24, 24)
    assert 576 + tiles.size + tiles.height == n  # one newline slot per tile-grid row, not an image key
    assert layout.valid.sum() == n - tiles.height


@pytest.mark.parametrize("size", SIZES)
def test_llava_onevision_real_config_matches_the_processor(size):
    from transformers import LlavaOnevisionConfig
    from transformers.models.llava_onevision.processing_llava_onevision import LlavaOnevisionProcessor

    config = LlavaOnevisionConfig(image_token_index=IMG)  # SigLIP 384/14, anyres_max_9, 36 pinpoints
    n = _processor_count(
        LlavaOnevisionProcessor, config, *size, num_image_tokens=729, vision_aspect_ratio="anyres_max_9"
    )
    layout = _layout(LlavaOnevisionAdapter(), config, [n], {"image_sizes": torch.tensor([size])})
    base, tiles = layout.grids[0]
    assert (base.height, base.width) == (27, 27)
    assert 729 + tiles.size + tiles.height == n
    assert tiles.size <= 9 * 729 * 1.1**2  # anyres_max_9 pooling


@pytest.mark.parametrize("family", ["llava_next", "llava_onevision"])
def test_encoded_features_give_the_layout_of_image_sizes(family):
    model = tiny_model(family, "eager")
    inputs = tiny_inputs(model, 2)
    adapter = ADAPTERS[family]
    from_sizes = adapter.layout(model.config, inputs["input_ids"], inputs)
    encoder_kwargs = {k: v for k, v in inputs.items() if k in ("pixel_values", "image_sizes", "batch_num_images")}
    with torch.no_grad():
        encoded = model.model.get_image_features(**encoder_kwargs, return_dict=True)
    from_features = adapter.layout(model.config, inputs["input_ids"], {"mm_encoder_outputs": {"image": encoded}})
    assert from_features.grids == from_sizes.grids
    assert torch.equal(from_features.positions, from_sizes.positions)
    assert from_sizes.grids[0][1] != from_sizes.grids[1][1]  # the rows' tile grids differ


def _two_image_prompt(model, generator):
    """Row 0: two untiled images (base grid + one newline slot each), as OneVision writes
    multi-image prompts; row 1: one tiled image."""
    side = tiny.TILE // tiny.PATCH
    one, patches = tiny.image_tokens(model.config, *tiny.IMAGE_SIZES["llava_onevision"][0])
    rows = [[1] + [IMG] * (side * side + 1) + [11] + [IMG] * (side * side + 1) + [12, 13], [1] + [IMG] * one + [14]]
    out = tiny.left_pad(rows)
    pixels = torch.zeros(3, patches, 3, tiny.TILE, tiny.TILE)
    pixels[:2, :1] = torch.randn(2, 1, 3, tiny.TILE, tiny.TILE, generator=generator)
    pixels[2] = torch.randn(patches, 3, tiny.TILE, tiny.TILE, generator=generator)
    out["pixel_values"] = pixels
    out["image_sizes"] = torch.tensor([[16, 16], [16, 16], list(tiny.IMAGE_SIZES["llava_onevision"][0])])
    out["batch_num_images"] = torch.tensor([2, 1])
    return out


def test_onevision_multi_image_rows_exclude_every_newline_slot():
    model = tiny_model("llava_onevision", "eager")
    inputs = _two_image_prompt(model, torch.Generator().manual_seed(0))
    layout = LlavaOnevisionAdapter().layout(model.config, inputs["input_ids"], inputs)
    assert [(g.height, g.width) for g in layout.grids[0]] == [(4, 4), (4, 4)]
    assert [(g.height, g.width) for g in layout.grids[1]] == [(4, 4), (8, 6)]
    image_index = torch.nonzero(inputs["input_ids"][0] == IMG).flatten()
    newline_slots = {int(image_index[16]), int(image_index[33])}
    assert not newline_slots & set(layout.positions[0, : int(layout.valid[0].sum())].tolist())
    # generate (encoded features, no image_sizes) finds the same layout and stays exact when observing
    expected = generate(model, inputs)
    with adapt_hooks.guard(model, monitor=DriftMonitor(steer=False)) as run:
        got = generate(model, inputs)
    assert torch.equal(got, expected)
    assert run.anchor.layout.grids == layout.grids and torch.equal(run.anchor.layout.positions, layout.positions)


def test_image_tokens_without_sizes_or_features_are_refused():
    model = tiny_model("llava_next", "eager")
    inputs = tiny_inputs(model, 1)
    with pytest.raises(ValueError, match="neither `image_sizes`"):
        LlavaNextAdapter().layout(model.config, inputs["input_ids"], {})


def test_image_sizes_that_do_not_match_the_prompt_are_refused():
    model = tiny_model("llava_next", "eager")
    inputs = tiny_inputs(model, 1)
    with pytest.raises(ValueError, match="row 0 has 72 image tokens but its images take"):
        LlavaNextAdapter().layout(model.config, inputs["input_ids"], {"image_sizes": torch.tensor([[12, 40]])})
