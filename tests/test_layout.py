"""Image layouts from prefill input_ids: positions per row (left padding), grids, skipped tokens."""

from __future__ import annotations

import types

import pytest
import torch

from adapt_hooks.adapters import Adapter
from adapt_hooks.layout import Grid, GridSpec

IMG = 3


class _NewlineAdapter(Adapter):
    """A square global grid, then a grid whose rows each end with an image-id newline token."""

    model_types = ("fake",)

    def row_grids(self, config, is_image, n_tokens, inputs):
        return [[(2, 2), GridSpec(2, 3, row_stride=4)] if n else [] for n in n_tokens]


CONFIG = types.SimpleNamespace(model_type="fake", image_token_id=IMG)


def test_positions_follow_each_row_and_skip_newlines():
    # row 0: 2 pads, bos, 4 global + 2 x (3 + newline) image tokens, text; row 1: no image
    row0 = [0, 0, 1] + [IMG] * 4 + [IMG] * 8 + [20, 21]
    row1 = [0] * 14 + [1, 22, 23]
    layout = _NewlineAdapter().layout(CONFIG, torch.tensor([row0, row1]), {})
    expected = [3, 4, 5, 6] + [7, 8, 9] + [11, 12, 13]  # cache index of each grid token
    assert layout.positions[0].tolist() == expected
    assert layout.valid[0].all() and not layout.valid[1].any()
    assert layout.grids == ((Grid(0, 2, 2), Grid(4, 2, 3)), ())
    assert layout.has_image.tolist() == [True, False] and layout.prefill_length == 17


def test_grids_that_do_not_match_the_image_tokens_are_refused():
    ids = torch.tensor([[1] + [IMG] * 11])
    with pytest.raises(ValueError, match="row 0 has 11 image tokens but its grids .* take 12"):
        _NewlineAdapter().layout(CONFIG, ids, {})
