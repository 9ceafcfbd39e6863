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


@pytest.mark.parametrize("seed", range(3))
def test_weighted_window_matches_the_stored_windows_semantics(seed: int) -> None:
    # Sampled metrics stand for 1 / sample_fraction events each: count, rate and sum weighted,
    # the mean weighted (as consumers/windows.py stores it), quantiles of the sampled values.
    rng = random.Random(seed)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    window = Window()
    kept: list[tuple[datetime, float, float]] = []
    for i in range(2000):
        ts, value, weight = t0 + timedelta(seconds=i * 0.1), rng.lognormvariate(1, 1), 1 / rng.choice([1, 0.5, 0.1])
        window.insert((ts, value), weight=weight)
        kept.append((ts, value, weight))
        if i % 100 == 99:
            horizon = ts - timedelta(seconds=60)
            window.prune(horizon)
            kept = [k for k in kept if k[0] >= horizon]
            weights = sum(w for _, _, w in kept)
            total = sum(v * w for _, v, w in kept)
            values = [v for _, v, _ in kept]
            assert window.value("count", 60.0) == pytest.approx(weights, rel=1e-12)
            assert window.value("rate", 60.0) == pytest.approx(weights / 60.0, rel=1e-12)
            assert window.value("sum", 60.0) == pytest.approx(total, rel=1e-9)
            assert window.value("mean", 60.0) == pytest.approx(total / weights, rel=1e-9)
            for kind in ("min", "max", "p50", "p95", "p99"):
                assert window.value(kind, 60.0) == pytest.approx(aggregate(kind, values, 60.0), rel=1e-9), kind
    while window:
        window.popleft()
    assert window.value("count", 60.0) == 0.0 and math.isnan(window.value("mean", 60.0))


def test_a_count_rule_on_a_sampled_metric_counts_the_events_it_stands_for() -> None:
    import uuid

    from atalaia.events import MetricEvent
    from monitors.evaluator import RuleEvaluator
    from monitors.rules import Rule

    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    rule = Rule(name="toxic_many", metric="toxicity", aggregation="count", window_s=60, threshold=30)
    evaluator = RuleEvaluator([rule])
    # 10 toxicity rows taken at fraction 0.25: 40 scored events' worth, over the threshold of 30.
    for i in range(10):
        evaluator.observe(
            MetricEvent(
                source_event_id=uuid.uuid4(),
                source_ts=t0 + timedelta(seconds=i),
                service="s",
                model_version="v1",
                name="toxicity",
                value=0.9,
                sample_fraction=0.25,
            )
        )
    alerts = evaluator.evaluate(t0 + timedelta(seconds=10))
    assert alerts and all(a.value == pytest.approx(40.0) for a in alerts), alerts
