"""Bootstrap 95 % intervals over images, and paired method-vs-plain comparisons.

Every benchmark metric here is a function of per-image counts summed over images (CHAIR_i:
hallucinated mentions / mentions; POPE accuracy: (tp + tn) / questions; ...). A bootstrap
replicate draws the images with replacement (the same number of images), which is the same as
weighting each image by a multinomial count; the metric of the replicate is computed from the
weighted sums. The interval is the 2.5th and 97.5th percentile of the replicates (percentile
bootstrap). A *paired* comparison uses the same replicate weights for both methods, because both
answered the same images: the interval of the difference then excludes the between-image
variation that the two share, which is why it is much narrower than the two intervals suggest.
Replicates are drawn from ``numpy.random.default_rng(seed)``: the same seed gives the same
intervals.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

#: Metrics from summed counts: ``f(sums)`` with ``sums[..., k]`` the k-th count summed over images
#: (any leading shape: one row per replicate) -> {name: values of that leading shape}.
MetricFn = Callable[[np.ndarray], Mapping[str, np.ndarray]]
N_BOOT = 1000


def ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """``numerator / denominator`` elementwise, 0 where the denominator is 0."""
    numerator, denominator = np.asarray(numerator, float), np.asarray(denominator, float)
    return np.divide(numerator, denominator, out=np.zeros(np.broadcast(numerator, denominator).shape), where=denominator != 0)


def per_unit(units: Sequence[str], rows: Sequence, count: Callable[[list], list], width: int) -> tuple[list[str], np.ndarray]:
    """The bootstrap's input: ``rows`` grouped by their ``units`` (images, in first-seen order),
    each group's ``count(rows)``, as ``[n_units, width]``."""
    groups: dict[str, list] = {}
    for unit, row in zip(units, rows):
        groups.setdefault(unit, []).append(row)
    return list(groups), np.array([count(g) for g in groups.values()], dtype=float).reshape(len(groups), width)


def replicate_weights(n: int, n_boot: int = N_BOOT, seed: int = 0) -> np.ndarray:
    """``int [n_boot, n]``: how often each of ``n`` images is drawn in each bootstrap replicate."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot) if n else np.zeros((n_boot, 0), dtype=int)


def replicates(counts: np.ndarray, metric: MetricFn, weights: np.ndarray) -> dict[str, np.ndarray]:
    """The metrics of each replicate: ``counts [n_images, k]``, ``weights [n_boot, n_images]``."""
    return {name: np.asarray(v, float) for name, v in metric(weights @ np.asarray(counts, float)).items()}


def percentile_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The central ``level`` percentile interval of bootstrap replicates."""
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def summarize(counts: np.ndarray, metric: MetricFn, *, n_boot: int = N_BOOT, seed: int = 0) -> dict[str, dict[str, float]]:
    """Each metric on all images with its bootstrap 95 % interval over images:
    ``{name: {"value", "low", "high"}}``."""
    counts = np.asarray(counts, float)
    point = metric(counts.sum(0))
    boot = replicates(counts, metric, replicate_weights(len(counts), n_boot, seed))
    out = {}
    for name, value in point.items():
        low, high = percentile_interval(boot[name]) if len(counts) else (float("nan"), float("nan"))
        out[name] = {"value": float(value), "low": low, "high": high}
    return out


def paired(
    counts: np.ndarray, baseline: np.ndarray, metric: MetricFn, *, n_boot: int = N_BOOT, seed: int = 0
) -> dict[str, dict[str, float]]:
    """Method minus baseline on the same images (row ``i`` of both is image ``i``), each metric's
    difference with its paired bootstrap 95 % interval: ``{name: {"diff", "low", "high"}}``."""
    counts, baseline = np.asarray(counts, float), np.asarray(baseline, float)
    if counts.shape != baseline.shape:
        raise ValueError(f"paired comparison needs the same images: counts {counts.shape} vs baseline {baseline.shape}")
    a, b = metric(counts.sum(0)), metric(baseline.sum(0))
    weights = replicate_weights(len(counts), n_boot, seed)
    ra, rb = replicates(counts, metric, weights), replicates(baseline, metric, weights)
    out = {}
    for name in a:
        low, high = percentile_interval(ra[name] - rb[name]) if len(counts) else (float("nan"), float("nan"))
        out[name] = {"diff": float(a[name] - b[name]), "low": low, "high": high}
    return out
