"""Migrations and idempotent writes on both supported databases."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, func, select

from atalaia.events import ChatMessage, InferenceEvent
from atalaia.metrics.operational import metric_events, operational_values
from atalaia.storage import repository
from atalaia.storage import tables as t
from atalaia.storage.db import current_revision, upgrade
from atalaia.storage.partitions import is_partition

pytestmark = pytest.mark.integration

HEAD = "0008_metrics_ts_index"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'a.db'}"
        upgrade(url)
        return url
    return str(request.getfixturevalue("fresh_pg"))


def _event() -> InferenceEvent:
    return InferenceEvent(
        service="svc",
        model_version="m@1",
        messages=[ChatMessage(role="user", content="olá ✓")],
        response="r",
        latency_ms=10.5,
        prompt_tokens=3,
        completion_tokens=2,
        cost=0.25,
        metadata={"nested": {"a": [1, 2]}},
    )


def test_migrated_schema_matches_the_tables(db_url: str) -> None:
    assert current_revision(db_url) == HEAD
    engine = create_engine(db_url)
    with engine.connect() as conn:
        # On PostgreSQL the partitions of inference_events and metrics are tables of their own.
        opts = {"include_name": lambda name, kind, _parent: kind != "table" or not is_partition(name)}
        diff = compare_metadata(MigrationContext.configure(conn, opts=opts), t.metadata)
    assert diff == []
    upgrade(db_url)  # idempotent
    assert current_revision(db_url) == HEAD


def test_writes_are_idempotent_on_event_id_and_metric_name(db_url: str) -> None:
    engine = create_engine(db_url)
    ev = _event()
    metrics = metric_events(ev, dict(operational_values(ev)))
    with engine.begin() as conn:
        assert repository.store_inference_batch(conn, [ev], metrics) == (1, len(metrics))
    with engine.begin() as conn:  # a redelivered batch
        assert repository.store_inference_batch(conn, [ev, ev], metrics + metrics) == (0, 0)
    other = _event()
    with engine.begin() as conn:  # mixed: one old, one new
        assert repository.store_inference_batch(conn, [ev, other], []) == (1, 0)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(t.metrics)).scalar_one() == len(metrics)
        row = conn.execute(select(t.inference_events).where(t.inference_events.c.event_id == str(ev.event_id))).one()
    assert row.metadata == {"nested": {"a": [1, 2]}}
    assert row.messages[0]["content"] == "olá ✓"
    assert row.ts.replace(tzinfo=row.ts.tzinfo or ev.ts.tzinfo) == ev.ts
    assert repository.table_counts(engine)["inference_events"] == 2


@pytest.mark.parametrize("method", ["auto", "copy", "insert"])
def test_batch_write_paths_store_each_row_once(db_url: str, method: str) -> None:
    """COPY through the staging table (PostgreSQL), executemany (SQLite) and the multi-row
    INSERT agree: new rows are counted, repeats (in the batch or already stored) are skipped,
    JSON, NULL and time values survive, and the staging table is left empty for the next write."""
    engine = create_engine(db_url)
    events = [_event() for _ in range(40)]
    rows = [repository.inference_row(e) for e in events]
    metrics = [repository.metric_row(m) for e in events for m in metric_events(e, dict(operational_values(e)))]
    metrics[0]["labels"] = {"backend": "x"}
    metrics[1]["error"], metrics[1]["value"] = "boom", None
    with engine.begin() as conn:
        assert repository.insert_ignoring_duplicates(conn, t.inference_events, rows[:30], method=method) == 30
        # One transaction, two writes through the same staging table: the second sees no leftovers.
        assert repository.insert_ignoring_duplicates(conn, t.inference_events, rows + rows[:5], method=method) == 10
        assert repository.insert_ignoring_duplicates(conn, t.metrics, metrics, method=method) == len(metrics)
    with engine.begin() as conn:  # a redelivered batch
        assert repository.insert_ignoring_duplicates(conn, t.metrics, metrics, method=method) == 0
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(t.inference_events)).scalar_one() == 40
        assert conn.execute(select(func.count()).select_from(t.metrics)).scalar_one() == len(metrics)
        first = conn.execute(
            select(t.metrics).where(
                t.metrics.c.event_id == metrics[0]["event_id"], t.metrics.c.name == metrics[0]["name"]
            )
        ).one()
        failed = conn.execute(
            select(t.metrics).where(
                t.metrics.c.event_id == metrics[1]["event_id"], t.metrics.c.name == metrics[1]["name"]
            )
        ).one()
        stored = conn.execute(
            select(t.inference_events).where(t.inference_events.c.event_id == rows[7]["event_id"])
        ).one()
    assert first.labels == {"backend": "x"} and first.value == metrics[0]["value"]
    assert failed.value is None and failed.error == "boom" and failed.labels is None
    assert stored.metadata == {"nested": {"a": [1, 2]}} and stored.messages[0]["content"] == "olá ✓"
    assert stored.ts.replace(tzinfo=stored.ts.tzinfo or events[7].ts.tzinfo) == events[7].ts
    assert stored.reference is None


def test_unreachable_postgres_fails_clearly() -> None:
    with pytest.raises(Exception, match=r"connect|refused|Connection"):
        upgrade(f"postgresql+psycopg://x:y@127.0.0.1:1/{uuid.uuid4().hex}")
