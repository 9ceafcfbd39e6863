"""Aggregations over a window of samples."""

from __future__ import annotations

import math
from bisect import bisect_right
from collections import deque
from collections.abc import Iterator, Sequence
from datetime import datetime

from atalaia.metrics.stats import percentile

__all__ = ["Window", "aggregate", "percentile"]


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


class RunningSum:
    """A sum that values are added to and taken from without accumulating rounding (Neumaier's
    compensated summation), so a window that slides for hours still sums what it holds.

    >>> total = RunningSum()
    >>> for v in (1e16, 1.0, -1e16):
    ...     total.add(v)
    >>> total.value
    1.0
    """

    def __init__(self) -> None:
        self._sum = 0.0
        self._comp = 0.0

    def add(self, value: float) -> None:
        """Add ``value`` (a negative one takes it away)."""
        total = self._sum + value
        if abs(self._sum) >= abs(value):
            self._comp += (self._sum - total) + value
        else:
            self._comp += (value - total) + self._sum
        self._sum = total

    def reset(self) -> None:
        """Back to exactly zero (an emptied window drops any residue)."""
        self._sum = self._comp = 0.0

    @property
    def value(self) -> float:
        """The sum."""
        return self._sum + self._comp


class Window:
    """The samples of one series in event-time order, with aggregates kept up to date as samples
    enter and leave, so evaluating a rule costs the same for a 60 s and a 900 s window.

    Count, sum and mean come from compensated running sums; min, max, percentiles and the share
    above a threshold from a sorted multiset of the values (``sortedcontainers.SortedList``:
    O(log n) per insert and removal, O(log n) per query). Results equal :func:`aggregate` over
    the same values (up to float rounding of the running sum).

    A sample may carry a weight: a metric scored on a sample of the events (the scoring budget,
    ``ATALAIA_SAMPLE_RATES``) stands for ``1 / sample_fraction`` events. As in the stored
    ``metric_windows`` (``consumers/windows.py``), ``count``, ``rate`` and ``sum`` are weighted
    (estimates of what scoring every event would give), ``mean`` and ``error_share`` are the
    weighted (Horvitz-Thompson) mean, equal to the plain one while the fraction is constant, and
    min, max, percentiles and ``share`` are of the sampled values, unweighted (a uniform sample's
    quantiles estimate the population's).

    It reads like the deque it replaces: ``append`` (in time order), ``popleft``, ``[0]``,
    ``[-1]``, ``len``, iteration.

    >>> from datetime import UTC, datetime, timedelta
    >>> t0 = datetime(2026, 1, 1, tzinfo=UTC)
    >>> w = Window()
    >>> for i, v in enumerate([5.0, 1.0, 3.0, 2.0]):
    ...     w.append((t0 + timedelta(seconds=i), v))
    >>> w.value("mean", 60), w.value("p50", 60), w.value("max", 60), w.value("share", 60, 2.5)
    (2.75, 2.5, 5.0, 0.5)
    >>> w.prune(t0 + timedelta(seconds=1)); w.value("max", 60), len(w)
    (3.0, 3)

    Two samples taken at fraction 0.5 (weight 2) stand for four events:

    >>> w = Window()
    >>> w.append((t0, 1.0), weight=2.0); w.append((t0, 3.0), weight=2.0)
    >>> w.value("count", 60), w.value("sum", 60), w.value("mean", 60), w.value("p50", 60)
    (4.0, 8.0, 2.0, 2.0)
    """

    def __init__(self) -> None:
        from sortedcontainers import SortedList

        self._items: deque[tuple[datetime, float]] = deque()
        self._weights: deque[float] = deque()
        self._sorted: SortedList = SortedList()
        self._count = RunningSum()  # sum of the weights
        self._sum = RunningSum()  # sum of weight * value

    def _account(self, value: float, weight: float) -> None:
        self._sorted.add(value)
        self._count.add(weight)
        self._sum.add(weight * value)

    def append(self, sample: tuple[datetime, float], weight: float = 1.0) -> None:
        """Add a sample no older than the newest one; ``weight``: the events it stands for."""
        self._items.append(sample)
        self._weights.append(weight)
        self._account(sample[1], weight)

    def insert(self, sample: tuple[datetime, float], weight: float = 1.0) -> None:
        """Add a sample of any time (a late arrival), keeping time order."""
        if not self._items or sample[0] >= self._items[-1][0]:
            self.append(sample, weight)
            return
        index = bisect_right([s[0] for s in self._items], sample[0])
        self._items.insert(index, sample)
        self._weights.insert(index, weight)
        self._account(sample[1], weight)

    def popleft(self) -> tuple[datetime, float]:
        """Remove and return the oldest sample."""
        sample = self._items.popleft()
        weight = self._weights.popleft()
        self._sorted.remove(sample[1])
        self._count.add(-weight)
        self._sum.add(-weight * sample[1])
        if not self._items:
            self._count.reset()
            self._sum.reset()
        return sample

    def prune(self, horizon: datetime) -> None:
        """Drop the samples older than ``horizon``."""
        while self._items and self._items[0][0] < horizon:
            self.popleft()

    def __len__(self) -> int:
        return len(self._items)

    def __bool__(self) -> bool:
        return bool(self._items)

    def __getitem__(self, index: int) -> tuple[datetime, float]:
        return self._items[index]

    def __iter__(self) -> Iterator[tuple[datetime, float]]:
        return iter(self._items)

    def _percentile(self, q: float) -> float:
        ordered = self._sorted
        pos = (len(ordered) - 1) * q / 100.0
        lo = math.floor(pos)
        hi = min(lo + 1, len(ordered) - 1)
        return float(ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo))

    def value(self, kind: str, window_s: float, share_above: float | None = None) -> float:
        """The aggregation ``kind`` of the samples (``share``: fraction above ``share_above``;
        ``error_share``: the mean of 0/1 error flags); NaN when empty, as :func:`aggregate`."""
        n = len(self._items)
        if kind == "count":
            return self._count.value
        if kind == "rate":
            return self._count.value / window_s
        if not n:
            return math.nan
        if kind in ("mean", "error_share"):
            return self._sum.value / self._count.value
        if kind == "sum":
            return self._sum.value
        if kind == "min":
            return float(self._sorted[0])
        if kind == "max":
            return float(self._sorted[-1])
        if kind in ("p50", "p95", "p99"):
            return self._percentile(float(kind[1:]))
        if kind == "share":
            above = share_above if share_above is not None else math.inf
            return (n - self._sorted.bisect_right(above)) / n
        raise ValueError(f"unknown aggregation {kind!r}")
