"""One series' rule evaluation: the old full recomputation against the incremental window.

Old: the window's samples copied into a list, then ``aggregate()`` (a sort for a percentile);
new: :class:`monitors.aggregate.Window`. p95 + mean + max of one series, medians of 7, at
10,000 and 100,000 samples; and the new window's cost of one sample in plus one out.
Usage: ``.venv/bin/python bench/windows.py``
"""

from __future__ import annotations

import random
import statistics
import sys
import time
from collections import deque
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from monitors.aggregate import Window, aggregate


def main() -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    print("| samples in the window | old per evaluation | new per evaluation | ratio | new: one in + one out |")
    print("|---|---|---|---|---|")
    for n in (10_000, 100_000):
        rng = random.Random(1)
        old: deque[tuple[datetime, float]] = deque()
        new = Window()
        for i in range(n):
            sample = (t0 + timedelta(milliseconds=i), rng.lognormvariate(6, 0.5))
            old.append(sample)
            new.append(sample)
        t_old, t_new = [], []
        for _ in range(7):
            start = time.perf_counter()
            values = [v for _, v in old]
            for kind in ("p95", "mean", "max"):
                aggregate(kind, values, 900)
            t_old.append(time.perf_counter() - start)
            start = time.perf_counter()
            for kind in ("p95", "mean", "max"):
                new.value(kind, 900)
            t_new.append(time.perf_counter() - start)
        start = time.perf_counter()
        for i in range(2000):
            new.append((t0 + timedelta(milliseconds=n + i), 1.0))
            new.popleft()
        slide = (time.perf_counter() - start) / 2000
        o, w = statistics.median(t_old), statistics.median(t_new)
        print(f"| {n:,} | {o * 1e3:.2f} ms | {w * 1e6:.1f} µs | {o / w:,.0f}x | {slide * 1e6:.1f} µs |")


if __name__ == "__main__":
    main()
