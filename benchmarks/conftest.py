"""Shared by the benchmark suites: one CPU thread (tiny models only lose to contention), and the
guarded / unguarded ratio of each case, measured in the same run and summarised at the end with
the targets of docs/performance.md.

pytest-benchmark's tables time each variant on its own (wall clock). The ratios come from
``paired``: baseline and candidate run alternately and are timed in process CPU time, and the
ratio is the median of the per-pair ratios, so a machine whose load changes during the run
(shared CI runners, laptops) still gives a fair comparison.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import pytest
import torch

torch.set_num_threads(1)

#: median seconds per (group, variant), filled as the benchmarks run (baselines run first)
MEDIANS: dict[tuple[str, str], float] = {}
#: (group, variant) -> (ratio, target or None)
RATIOS: dict[tuple[str, str], tuple[float, float | None]] = {}


@pytest.fixture
def ratio():
    """``ratio(benchmark, group, variant, baseline="unguarded", target=None, value=None)``: record
    this benchmark's median (or ``value``, e.g. bytes) and, once its baseline has run, its ratio to
    it (in ``extra_info`` too)."""

    def record(benchmark, group: str, variant: str, baseline: str = "unguarded", target: float | None = None,
               value: float | None = None):
        median = benchmark.stats.stats.median if value is None else value
        MEDIANS[(group, variant)] = median
        base = MEDIANS.get((group, baseline))
        if base is not None and variant != baseline:
            result = median / base
            benchmark.extra_info[f"ratio_vs_{baseline}"] = round(result, 3)
            RATIOS[(group, variant)] = (result, target)
            return result
        return None

    return record


@pytest.fixture
def paired():
    """``paired(group, variant, baseline, candidate, rounds=5, number=1, target=None)``: the median
    over ``rounds`` of (CPU time of ``number`` calls of ``candidate``) / (same for ``baseline``),
    the two alternating; recorded for the summary."""

    def measure(group: str, variant: str, baseline: Callable, candidate: Callable, rounds: int = 5, number: int = 1,
                target: float | None = None) -> float:
        ratios = []
        for _ in range(rounds):
            start = time.process_time()
            for _ in range(number):
                baseline()
            middle = time.process_time()
            for _ in range(number):
                candidate()
            ratios.append((time.process_time() - middle) / max(middle - start, 1e-9))
        value = statistics.median(ratios)
        RATIOS[(group, variant)] = (value, target)
        return value

    return measure


@pytest.fixture
def record_ratio():
    """``record_ratio(group, variant, value, target=None)``: a ratio measured by the test itself."""

    def record(group: str, variant: str, value: float, target: float | None = None) -> None:
        RATIOS[(group, variant)] = (value, target)

    return record


def pytest_terminal_summary(terminalreporter):
    if not RATIOS:
        return
    terminalreporter.section("adapt-hooks: guarded / baseline (medians of this run)")
    for (group, variant), (value, target) in sorted(RATIOS.items()):
        verdict = "" if target is None else ("  within target" if value <= target else f"  ABOVE target {target:.2f}x")
        terminalreporter.write_line(f"{group:42s} {variant:22s} {value:7.3f}x{verdict}")
