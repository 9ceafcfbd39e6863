"""The incremental window agrees with recomputing every aggregate from its samples."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime, timedelta

import pytest

from monitors.aggregate import Window, aggregate

KINDS = ("count", "rate", "mean", "sum", "min", "max", "p50", "p95", "p99")


@pytest.mark.parametrize("seed", range(5))
def test_window_matches_recomputation_while_sliding(seed: int) -> None:
    rng = random.Random(seed)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    window = Window()
    kept: list[tuple[datetime, float]] = []
    now = t0
    for step in range(3000):
        now += timedelta(milliseconds=rng.randint(0, 400))
        value = rng.choice([rng.lognormvariate(6, 1), float(rng.randint(0, 3)), 1e9, -1e-9])
        late = rng.random() < 0.05
        sample = (now - timedelta(seconds=rng.randint(1, 30)) if late else now, value)
        window.insert(sample)
        kept.append(sample)
        kept.sort(key=lambda s: s[0])
        if step % 50 == 0:
            horizon = now - timedelta(seconds=60)
            window.prune(horizon)
            kept = [s for s in kept if s[0] >= horizon]
            values = [v for _, v in kept]
            assert [s for s in window] == kept
            for kind in KINDS:
                assert window.value(kind, 60.0) == pytest.approx(aggregate(kind, values, 60.0), rel=1e-9), kind
            above = rng.choice([0.5, 2.0, 500.0])
            share = sum(1 for v in values if v > above) / len(values)
            assert window.value("share", 60.0, above) == pytest.approx(share)


def test_empty_window_is_nan_and_counts_zero() -> None:
    window = Window()
    assert window.value("count", 60) == 0 and window.value("rate", 60) == 0
    assert all(math.isnan(window.value(k, 60)) for k in ("mean", "sum", "min", "max", "p95", "share"))
    window.append((datetime(2026, 1, 1, tzinfo=UTC), 1.0))
    with pytest.raises(ValueError, match="unknown aggregation"):
        window.value("median", 60)
