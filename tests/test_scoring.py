"""Tests for adapt_hooks.scoring against hand-computed values and independent numpy / loop re-implementations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from adapt_hooks.scoring import (
    COMBINED_WEIGHTS,
    D_STAR,
    PAPER_WEIGHTS,
    border_mask,
    combine,
    fuse,
    fusion_weights,
    layer_scores,
    minmax,
    refine,
)

KEYS = ("boundary", "spectral", "smooth", "focus", "position", "combined")


def score1(a, layer: int = 0, n_layers: int = 32) -> dict[str, float]:
    """Scores of a single [H, W] map as Python floats."""
    out = layer_scores(torch.as_tensor(a, dtype=torch.float32)[None], [layer], n_layers)
    return {k: float(v[0]) for k, v in out.items()}


# ----------------------------------------------------------------------------- reference implementations


def np_band(h: int, w: int, b: int) -> np.ndarray:
    m = np.zeros((h, w), dtype=bool)
    for i in range(h):
        for j in range(w):
            m[i, j] = i < b or i >= h - b or j < b or j >= w - b
    return m


def np_minmax(x: np.ndarray) -> np.ndarray:
    rng = x.max() - x.min()
    return np.full_like(x, 0.5) if rng < 1e-12 else (x - x.min()) / rng


def np_spectral(a: np.ndarray, d: float) -> float:
    h, w = a.shape
    if a.max() - a.min() < 1e-12:
        return 0.5
    power = np.abs(np.fft.fftshift(np.fft.fft2(np_minmax(a)))) ** 2
    cy, cx = h // 2, w // 2
    corners = [(0, 0), (0, w - 1), (h - 1, 0), (h - 1, w - 1)]
    r_max = max(math.hypot(y - cy, x - cx) for y, x in corners)
    high = 0.0
    for y in range(h):
        for x in range(w):
            if math.hypot(y - cy, x - cx) > 0.25 * r_max:
                high += power[y, x]
    ideal = 0.8 * (1 - d) + 0.2 * d
    return 1 - abs(high / power.sum() - ideal)


def np_smooth(a: np.ndarray) -> float:
    h, w = a.shape
    sx = [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]
    sy = [[-1, -2, -1], [0, 0, 0], [1, 2, 1]]
    total = 0.0
    for i in range(h):
        for j in range(w):
            gx = gy = 0.0
            for di in range(3):
                for dj in range(3):
                    y, x = i + di - 1, j + dj - 1
                    v = a[y, x] if 0 <= y < h and 0 <= x < w else 0.0
                    gx += sx[di][dj] * v
                    gy += sy[di][dj] * v
            total += math.sqrt(gx * gx + gy * gy)
    return 1 / (1 + total / (h * w))


def np_mean_filter(x: np.ndarray, k: int) -> np.ndarray:
    p = k // 2
    padded = np.pad(x, p, mode="edge")
    out = np.empty_like(x)
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            out[i, j] = padded[i : i + k, j : j + k].mean()
    return out


def np_refine(a: np.ndarray) -> np.ndarray:
    h, w = a.shape
    x = np_minmax(a)
    std = x.std()  # population std
    z = np.zeros_like(x) if std < 1e-12 else (x - x.mean()) / std
    x = 1 / (1 + np.exp(-10 * z))
    x = np_mean_filter(x, 3)
    b = min(2, (min(h, w) - 1) // 2)
    x = np.where(np_band(h, w, b), 0.5 * x, x)
    x = np_minmax(np_mean_filter(x, 5))
    q = np.quantile(x, 0.4)  # numpy default method is "linear"
    x = np.where(x < q, 0.0, x)
    return np_minmax(x)


# ----------------------------------------------------------------------------- helpers


def test_minmax_and_constant():
    x = torch.tensor([[1.0, 3.0], [2.0, 5.0]])
    torch.testing.assert_close(minmax(x), torch.tensor([[0.0, 0.5], [0.25, 1.0]]))
    assert torch.equal(minmax(torch.full((2, 3, 4), 7.0)), torch.full((2, 3, 4), 0.5))
    assert minmax(x.half()).dtype == torch.float32


def test_border_mask():
    m = border_mask(5, 6, 1)
    assert m.dtype == torch.bool and m.shape == (5, 6)
    assert np.array_equal(m.numpy(), np_band(5, 6, 1))
    assert int(border_mask(6, 6, 2).sum()) == 36 - 4
    assert not border_mask(4, 4, 0).any()


# ----------------------------------------------------------------------------- boundary


def test_boundary_bright_centre_is_one():
    a = np.full((6, 6), 0.01)
    a[2:4, 2:4] = 1.0
    assert score1(a)["boundary"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    "border, interior, expected",
    [
        (1.0, 2.0, 1.0),  # r = 0.5 <= 0.6
        (1.0, 1.25, 0.6),  # r = 0.8 -> 1 - 2 * 0.2
        (1.0, 1.0, 0.2),  # r = 1.0 -> 1 - 2 * 0.4
        (3.0, 1.0, 0.0),  # r = 3 -> clamped to 0
    ],
)
def test_boundary_ratio_by_hand(border, interior, expected):
    a = np.full((6, 6), border)
    a[2:4, 2:4] = interior  # band of 2 leaves exactly the 2x2 centre as interior
    assert score1(a)["boundary"] == pytest.approx(expected, abs=1e-6)


def test_boundary_uses_all_four_sides():
    # Bright left/right columns only; top/bottom rows of the band are dark.
    a = np.full((8, 8), 0.1)
    a[2:6, :2] = a[2:6, 6:] = 1.0
    # band: 28 cells, 16 of them bright (1.0), 12 dark (0.1); interior 16 cells of 0.1
    r = (16 * 1.0 + 12 * 0.1) / 28 / 0.1
    assert r > 1.1
    assert score1(a)["boundary"] == pytest.approx(0.0)
    a2 = np.full((8, 8), 0.1)
    a2[2:6, 2:6] = 0.2
    a2[2:6, :2] = a2[2:6, 6:] = 0.12  # r = (8*.12*2 + 12*.1)/28 / .2 = 0.557 -> 1
    assert score1(a2)["boundary"] == pytest.approx(1.0)


def test_boundary_small_grids_and_degenerate_means():
    a = np.full((4, 4), 1.0)  # b = 1: 12 band cells, 4 interior cells
    a[1:3, 1:3] = 2.0
    assert score1(a)["boundary"] == pytest.approx(1.0)  # r = 0.5
    a[1:3, 1:3] = 1.0 / 0.7  # r = 0.7 -> 0.8
    assert score1(a)["boundary"] == pytest.approx(0.8, abs=1e-6)
    assert score1(np.ones((2, 5)))["boundary"] == 1.0  # b = 0: no interior
    assert score1(np.zeros((6, 6)))["boundary"] == 1.0  # both means < 1e-6
    z = np.zeros((6, 6))
    z[0, 0] = 1.0  # interior mean 0, border mean > 0 -> r = inf
    assert score1(z)["boundary"] == 0.0


# ----------------------------------------------------------------------------- spectral


@pytest.mark.parametrize("shape", [(6, 6), (5, 7), (24, 24), (3, 4)])
def test_spectral_matches_numpy(shape):
    g = torch.Generator().manual_seed(sum(shape))
    L, n_layers, ids = 4, 32, [0, 7, 20, 31]
    maps = torch.rand(L, *shape, generator=g)
    maps[1] = maps[1] ** 4  # a peakier map
    got = layer_scores(maps, ids, n_layers)["spectral"]
    want = [np_spectral(maps[i].double().numpy(), ids[i] / (n_layers - 1)) for i in range(L)]
    np.testing.assert_allclose(got.numpy(), want, atol=1e-5)


def test_spectral_constant_is_half():
    out = layer_scores(torch.full((2, 5, 5), 0.3), [0, 3], 4)["spectral"]
    assert torch.equal(out, torch.full((2,), 0.5))


# ----------------------------------------------------------------------------- smooth / focus / position


@pytest.mark.parametrize("shape", [(6, 6), (5, 7), (1, 1)])
def test_smooth_matches_loop_sobel(shape):
    g = torch.Generator().manual_seed(3)
    maps = torch.rand(3, *shape, generator=g) * 0.2
    got = layer_scores(maps, [0, 1, 2], 3)["smooth"]
    want = [np_smooth(maps[i].double().numpy()) for i in range(3)]
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5)
    assert score1(np.zeros(shape))["smooth"] == 1.0


def test_focus_cases():
    one_hot = np.zeros((6, 6))
    one_hot[3, 2] = 0.7
    assert score1(one_hot)["focus"] == pytest.approx(1.0)
    assert score1(np.full((6, 6), 1 / 36))["focus"] == 0.0
    assert score1(np.zeros((6, 6)))["focus"] == 0.0
    assert score1(np.ones((1, 1)))["focus"] == 0.0
    two_hot = np.zeros((4, 4))
    two_hot[0, 0] = two_hot[2, 3] = 0.5  # entropy log 2
    assert score1(two_hot)["focus"] == pytest.approx(1 - math.log(2) / math.log(16), abs=1e-6)


def test_position_and_depth():
    maps = torch.rand(4, 5, 5)
    pos = layer_scores(maps, [20, 0, 31, 10], 32)["position"]
    expected = [1.0, 0.0, 1 - 4 * (1 - D_STAR) ** 2, max(0.0, 1 - 4 * (10 / 31 - D_STAR) ** 2)]
    np.testing.assert_allclose(pos.numpy(), expected, atol=1e-6)
    assert D_STAR == pytest.approx(20 / 31)
    # one-layer model: d = 0; tensor layer ids accepted
    p1 = layer_scores(maps[:1], torch.tensor([0]), 1)["position"]
    assert float(p1[0]) == pytest.approx(max(0.0, 1 - 4 * D_STAR**2))
    # relative depth d = l / (n_layers - 1): last layer of a 16-layer model has d = 1
    sp = layer_scores(maps[:1], [15], 16)["spectral"]
    assert float(sp[0]) == pytest.approx(np_spectral(maps[0].double().numpy(), 1.0), abs=1e-5)


def test_layer_ids_length_mismatch():
    with pytest.raises(ValueError):
        layer_scores(torch.rand(3, 4, 4), [0, 1], 4)


# ----------------------------------------------------------------------------- combine / fusion


def test_combined_is_weighted_sum():
    s = layer_scores(torch.rand(2, 5, 6, 6), [3, 10, 20, 25, 31], 32)
    assert set(s) == set(KEYS)
    manual = sum(w * s[k] for k, w in {"boundary": 0.25, "spectral": 0.30, "smooth": 0.15,
                                        "focus": 0.20, "position": 0.10}.items())
    torch.testing.assert_close(s["combined"], manual)
    torch.testing.assert_close(combine(s), manual)
    torch.testing.assert_close(combine(s, PAPER_WEIGHTS), 0.4 * s["spectral"] + 0.3 * s["smooth"] + 0.3 * s["focus"])
    assert sum(COMBINED_WEIGHTS.values()) == pytest.approx(1.0)


def test_fusion_weights_hand_case():
    w = fusion_weights(torch.tensor([0.2, 0.45, 0.7]))  # normalises to [0, 0.5, 1]
    e = np.exp([0.0, 5.0, 10.0])
    np.testing.assert_allclose(w.numpy(), e / e.sum(), rtol=1e-5)
    w2 = fusion_weights(torch.tensor([1.0, 2.0]), temperature=1.0)
    np.testing.assert_allclose(w2.numpy(), np.exp([0, 1]) / np.exp([0, 1]).sum(), rtol=1e-6)


def test_fusion_weights_all_equal_and_batched():
    for s in (torch.full((4,), 0.3), torch.zeros(4)):
        torch.testing.assert_close(fusion_weights(s), torch.full((4,), 0.25))
    s = torch.rand(2, 3, 5)
    w = fusion_weights(s)
    assert w.shape == (2, 3, 5)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 3))
    torch.testing.assert_close(w[1, 2], fusion_weights(s[1, 2]))


def test_fuse():
    maps, w = torch.rand(2, 3, 4, 5), torch.rand(2, 3)
    want = torch.stack([sum(w[b, l] * maps[b, l] for l in range(3)) for b in range(2)])
    torch.testing.assert_close(fuse(maps, w), want)
    assert fuse(maps.half(), w.half()).dtype == torch.float32


# ----------------------------------------------------------------------------- refine


@pytest.mark.parametrize("seed, shape", [(0, (5, 7)), (1, (24, 24)), (2, (4, 4)), (3, (2, 6))])
def test_refine_matches_numpy(seed, shape):
    a = torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) ** 3
    got = refine(a)
    np.testing.assert_allclose(got.numpy(), np_refine(a.double().numpy()), atol=1e-5)
    assert float(got.max()) == pytest.approx(1.0) and float(got.min()) == 0.0


def test_refine_constant_is_half():
    assert torch.equal(refine(torch.full((5, 7), 0.2)), torch.full((5, 7), 0.5))
    # in a batch, only the constant row is special-cased
    a = torch.rand(5, 7, generator=torch.Generator().manual_seed(4))
    out = refine(torch.stack([a, torch.zeros(5, 7)]))
    assert torch.equal(out[1], torch.full((5, 7), 0.5))
    torch.testing.assert_close(out[0], refine(a))


def test_refine_zeroes_below_percentile():
    a = torch.rand(6, 8, generator=torch.Generator().manual_seed(5))
    w = refine(a)
    assert int((w == 0).sum()) >= int(0.4 * 48) - 1
    assert ((w >= 0) & (w <= 1)).all()


# ----------------------------------------------------------------------------- batching, dtypes, errors


def test_batching_equals_per_element():
    g = torch.Generator().manual_seed(7)
    maps = torch.rand(2, 3, 4, 6, 5, generator=g) ** 2
    ids, n = [2, 9, 20, 31], 32
    batched = layer_scores(maps, ids, n)
    ref = refine(maps.mean(-3))
    for i in range(2):
        for j in range(3):
            single = layer_scores(maps[i, j], ids, n)
            for k in KEYS:
                assert batched[k].shape == (2, 3, 4)
                torch.testing.assert_close(batched[k][i, j], single[k])
            torch.testing.assert_close(ref[i, j], refine(maps[i, j].mean(0)))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_low_precision_input_gives_float32(dtype):
    maps = torch.rand(3, 6, 6, generator=torch.Generator().manual_seed(11))
    lowp = maps.to(dtype)
    ref = layer_scores(lowp.float(), [0, 15, 31], 32)
    out = layer_scores(lowp, [0, 15, 31], 32)
    for k in KEYS:
        assert out[k].dtype == torch.float32
        torch.testing.assert_close(out[k], ref[k])
    # close to the full-precision result, too
    torch.testing.assert_close(out["combined"], layer_scores(maps, [0, 15, 31], 32)["combined"], atol=2e-2, rtol=0)
    r = refine(lowp[0])
    assert r.dtype == torch.float32
    torch.testing.assert_close(r, refine(lowp[0].float()))
    assert fusion_weights(ref["combined"].to(dtype)).dtype == torch.float32


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_input_raises(bad):
    maps = torch.rand(2, 5, 5)
    maps[1, 2, 3] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        layer_scores(maps, [0, 1], 2)
    with pytest.raises(ValueError, match="NaN or inf"):
        refine(maps[1])
    with pytest.raises(ValueError, match="NaN or inf"):
        refine(maps[1].half())
