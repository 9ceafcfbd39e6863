"""Window aggregates and the table-backed drift runner, on an embedded SQLite database."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from atalaia.events import MetricEvent
from atalaia.settings import Settings
from atalaia.storage import repository
from atalaia.storage import tables as t
from atalaia.storage.db import get_engine, upgrade
from consumers.drift import DriftRunner, drift_metrics
from consumers.windows import materialize

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def engine(tmp_path: Path):  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path / 'w.db'}"
    upgrade(url)
    return get_engine(url)


def _metric(value: float | None, at: datetime, name: str = "latency_ms", version: str = "v1") -> dict:
    src = uuid.uuid4()
    return repository.metric_row(
        MetricEvent(
            source_event_id=src,
            source_ts=at,
            service="s",
            model_version=version,
            name=name,
            value=value,
            error=None if value is not None else "boom",
        )
    )


def test_tumbling_windows_per_version_and_metric(engine) -> None:  # type: ignore[no-untyped-def]
    rows = [_metric(float(v), T0 + timedelta(seconds=v % 60)) for v in range(1, 101)]
    rows += [
        _metric(None, T0 + timedelta(seconds=5)),
        _metric(7.0, T0 + timedelta(seconds=70)),
        _metric(3.0, T0 + timedelta(seconds=1), version="v2"),
    ]
    with engine.begin() as conn:
        repository.insert_ignoring_duplicates(conn, t.metrics, rows)
        written = materialize(conn, 60, now=T0 + timedelta(seconds=200), lookback_s=600)
    assert written == 3
    with engine.connect() as conn:
        got = {(r.window_start.replace(tzinfo=UTC), r.model_version): r for r in conn.execute(select(t.metric_windows))}
    first = got[(T0, "v1")]
    assert first.count == 100 and first.errors == 1
    assert first.mean == pytest.approx(50.5) and first.p50 == pytest.approx(50.5) and first.p99 == pytest.approx(99.01)
    assert got[(T0 + timedelta(seconds=60), "v1")].count == 1 and got[(T0, "v2")].mean == 3.0
    with engine.begin() as conn:  # idempotent: recomputing gives the same rows, no duplicates
        materialize(conn, 60, now=T0 + timedelta(seconds=200), lookback_s=600)
    with engine.connect() as conn:
        assert len(conn.execute(select(t.metric_windows)).all()) == 3


def _store_embeddings(engine, vectors: np.ndarray, start: int, version: str = "v1") -> None:  # type: ignore[no-untyped-def]
    rows = []
    for i, vec in enumerate(vectors):
        rows.append(
            {
                "event_id": str(uuid.uuid4()),
                "kind": "prompt",
                "model_version": version,
                "ts": T0 + timedelta(seconds=start + i),
                "dim": vectors.shape[1],
                "vector": vec.astype(np.float32).tobytes(),
            }
        )
    with engine.begin() as conn:
        repository.insert_ignoring_duplicates(conn, t.embeddings, rows)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_drift_runner_flags_a_shift_and_survives_a_restart(engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings = Settings(
        home=tmp_path, drift_reference_size=200, drift_window_size=50, drift_stride=25, drift_target_arl=1000
    )
    rng = np.random.default_rng(0)
    base = rng.normal(size=32)
    _store_embeddings(engine, _unit(base + rng.normal(size=(300, 32))), 0)
    runner = DriftRunner(settings)
    with engine.begin() as conn:
        tests = runner.run(conn, {"v1"})
    # One test per stride once reference (200) + window (50) are there: at 250, 275 and 300.
    assert [x.drift for x in tests] == [False, False, False]
    # More stationary data, then a restart (a fresh runner reads the state back).
    _store_embeddings(engine, _unit(base + rng.normal(size=(100, 32))), 300)
    with engine.begin() as conn:
        assert [x.drift for x in DriftRunner(settings).run(conn, {"v1"})] == [False] * 4
        state = conn.execute(select(t.drift_state)).mappings().one()
    assert state["n_tests"] == 7 and state["last_count"] == 400
    # A shifted stream is flagged.
    shifted = base + rng.normal(size=(60, 32)) + 1.5 * np.eye(32)[0]
    _store_embeddings(engine, _unit(shifted), 400)
    with engine.begin() as conn:
        *_, flagged = DriftRunner(settings).run(conn, {"v1"})
    assert flagged.drift and flagged.score > flagged.threshold and flagged.n_tests == 9
    names = {m.name: m.value for m in drift_metrics(flagged)}
    assert names["embedding_drift_flag"] == 1.0 and names["embedding_drift_threshold"] == pytest.approx(
        flagged.threshold
    )
    with engine.begin() as conn:  # nothing new: no test is due
        assert DriftRunner(settings).run(conn, {"v1"}) == []
