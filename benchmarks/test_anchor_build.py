"""Anchor scoring + fusion + refinement time for 1, 4 and 16 rows of LLaVA-1.5-shaped maps
(32 hooked layers, one 24x24 grid per row): paid once per prompt, after the k-th decode step."""

from __future__ import annotations

import pytest
import torch

from adapt_hooks import Anchor


@pytest.mark.parametrize("rows", [1, 4, 16])
def test_anchor_build(benchmark, ratio, rows):
    benchmark.group = "anchor build (32 layers, 24x24)"
    maps = torch.rand(rows, 32, 24, 24, generator=torch.Generator().manual_seed(rows))
    anchor = benchmark.pedantic(lambda: Anchor.from_layer_maps(maps, range(32), 32), rounds=20, warmup_rounds=2)
    assert anchor.weights.shape == (rows, 576)
    benchmark.extra_info["ms_per_row"] = round(benchmark.stats.stats.median * 1e3 / rows, 3)
    ratio(benchmark, "anchor build: rows vs 1 row", f"{rows} rows", baseline="1 rows")
