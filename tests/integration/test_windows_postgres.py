"""Window aggregates on PostgreSQL: the server-side aggregation (one row per window comes back)
gives the same windows as the Python one SQLite uses, sampled rows, errors and several versions
included, and its time-range read uses the ``ts`` index (EXPLAIN)."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import create_engine, select, text

from atalaia.events import MetricEvent
from atalaia.storage import repository
from atalaia.storage import tables as t
from atalaia.storage.partitions import ensure_partitions
from consumers.windows import _aggregate_in_python, materialize

pytestmark = pytest.mark.integration

T0 = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=1)


def _rows(n: int, seed: int = 7) -> list[dict]:
    rnd = random.Random(seed)
    rows = []
    for _ in range(n):
        value = None if rnd.random() < 0.05 else rnd.lognormvariate(5, 1)
        metric = MetricEvent(
            source_event_id=uuid.UUID(int=rnd.getrandbits(128)),
            source_ts=T0 + timedelta(seconds=rnd.uniform(0, 300)),
            service="s",
            model_version=rnd.choice(["m@1", "m@2"]),
            name=rnd.choice(["latency_ms", "meteor", "cost"]),
            value=value,
            error=None if value is not None else "boom",
            sample_fraction=rnd.choice([1.0, 1.0, 0.5, 0.01]),
        )
        rows.append(repository.metric_row(metric))
    # A window holding nothing but errors: count 0, no mean, no percentiles.
    only_error = MetricEvent(
        source_event_id=uuid.uuid4(),
        source_ts=T0 + timedelta(seconds=30),
        service="s",
        model_version="m@3",
        name="perplexity",
        error="too long",
    )
    return [*rows, repository.metric_row(only_error)]


def test_server_side_windows_match_the_python_aggregation(fresh_pg: str) -> None:
    engine = create_engine(fresh_pg)
    with engine.begin() as conn:
        ensure_partitions(conn, since=T0)
        repository.insert_ignoring_duplicates(conn, t.metrics, _rows(3000))
        written = materialize(conn, 60, now=T0 + timedelta(minutes=10), lookback_s=3600)
        expected = _aggregate_in_python(conn, 60, T0 - timedelta(hours=1), T0 + timedelta(minutes=10))
    assert written == len(expected) > 20
    with engine.connect() as conn:
        got = {
            (r.window_start, r.model_version, r.name): r
            for r in conn.execute(select(t.metric_windows).where(t.metric_windows.c.window_s == 60))
        }
    for want in expected:
        row = got[(want["window_start"], want["model_version"], want["name"])]
        assert (row.count, row.errors) == (want["count"], want["errors"])
        for stat in ("mean", "p50", "p95", "p99"):
            if want[stat] is None:
                assert getattr(row, stat) is None, (want, stat)
            else:
                assert getattr(row, stat) == pytest.approx(want[stat], rel=1e-9), (want, stat)
    errors_only = got[(T0, "m@3", "perplexity")]
    assert (errors_only.count, errors_only.errors, errors_only.mean, errors_only.p95) == (0, 1, None, None)


def test_the_window_read_uses_the_ts_index(fresh_pg: str) -> None:
    engine = create_engine(fresh_pg)
    with engine.begin() as conn:
        ensure_partitions(conn, since=T0)
        repository.insert_ignoring_duplicates(conn, t.metrics, _rows(2000))
        conn.execute(text("ANALYZE metrics"))
        conn.execute(text("SET LOCAL enable_seqscan = off"))
        plan = "\n".join(
            conn.execute(
                text("EXPLAIN SELECT value FROM metrics WHERE ts >= :start AND ts < :end"),
                {"start": T0, "end": T0 + timedelta(minutes=2)},
            ).scalars()
        )
    # Each partition's copy of ix_metrics_ts (BRIN on ts) is named <partition>_ts_idx.
    assert "Seq Scan" not in plan and "_ts_idx" in plan, plan
