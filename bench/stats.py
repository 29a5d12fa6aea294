"""Statistics the benchmarks report: percentiles of a sample, medians, and ratios against a baseline
(pure functions, unit-tested in tests/unit/test_bench_stats.py)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from statistics import median


def percentile(values: Iterable[float], q: float) -> float:
    """The q-th percentile (0 <= q <= 100) by linear interpolation between the closest ranks (numpy's
    default): p50 of [1, 2, 3, 4] is 2.5, p100 is the maximum. A sample of one is every percentile."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("percentile of an empty sample")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is not between 0 and 100")
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary(values: Sequence[float], digits: int = 4) -> dict[str, float]:
    """n, p50, p99, max and min of a sample (empty: only n = 0)."""
    if not values:
        return {"n": 0}
    return {"n": len(values), "p50": round(percentile(values, 50), digits),
            "p99": round(percentile(values, 99), digits), "min": round(min(values), digits),
            "max": round(max(values), digits)}


def ratio(value: float, baseline: float) -> float | None:
    """value / baseline, None when the baseline is 0 (nothing measured)."""
    return value / baseline if baseline else None


def median_ratio(pairs: Iterable[tuple[float, float]]) -> float | None:
    """The median of the per-round ratios value / baseline over (baseline, value) pairs whose
    baseline is not 0; None when no pair has a baseline. Rounds measured side by side share the
    machine's drift, which the per-round ratio cancels."""
    ratios = [v / b for b, v in pairs if b]
    return median(ratios) if ratios else None
