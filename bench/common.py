"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from atalaia.metrics.stats import percentile


def pct(values: Sequence[float], q: float) -> float:
    """Percentile ``q`` (0-100) of ``values`` with linear interpolation."""
    return percentile(values, q)


def summary(values: Sequence[float]) -> str:
    """``p50 / p95 / p99`` of ``values`` formatted to two decimals."""
    return f"p50 {pct(values, 50):8.2f}  p95 {pct(values, 95):8.2f}  p99 {pct(values, 99):8.2f}  (n={len(values)})"


def median(values: Sequence[float]) -> float:
    """Median of ``values``."""
    return statistics.median(values)
