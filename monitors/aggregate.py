"""Aggregations over a window of samples."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method), ``q`` in [0, 100].

    >>> percentile([1.0, 2.0, 3.0, 4.0], 50)
    2.5
    >>> percentile([10.0], 95)
    10.0
    """
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def aggregate(kind: str, values: Sequence[float], window_s: float) -> float:
    """Aggregate ``values`` observed over ``window_s`` seconds.

    >>> aggregate("rate", [1.0] * 120, 60.0)
    2.0
    """
    if kind == "count":
        return float(len(values))
    if kind == "rate":
        return len(values) / window_s
    if not values:
        return math.nan
    if kind == "mean":
        return sum(values) / len(values)
    if kind == "sum":
        return float(sum(values))
    if kind == "min":
        return min(values)
    if kind == "max":
        return max(values)
    if kind in ("p50", "p95", "p99"):
        return percentile(values, float(kind[1:]))
    raise ValueError(f"unknown aggregation {kind!r}")
