"""Aggregations over a window of samples."""

from __future__ import annotations

import math
from collections.abc import Sequence

from atalaia.metrics.stats import percentile

__all__ = ["aggregate", "percentile"]


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
