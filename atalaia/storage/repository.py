"""Idempotent writes and common reads.

Writes use ``INSERT ... ON CONFLICT DO NOTHING`` on each table's natural key, so a message
redelivered after a crash (Kafka is at-least-once) changes nothing: exactly once in effect.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, Table, func, select
from sqlalchemy.dialects import postgresql, sqlite

from atalaia.events import AlertEvent, FeedbackEvent, InferenceEvent, MetricEvent, utcnow
from atalaia.storage import tables as t
from atalaia.storage.db import storable_json


def as_utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; every stored time is UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


#: From this many rows on, PostgreSQL writes go through ``COPY`` into a staging table: one
#: stream instead of a statement with thousands of bound parameters to parse and plan.
COPY_MIN_ROWS = 16


def insert_ignoring_duplicates(
    conn: Connection, table: Table, rows: Sequence[dict[str, Any]], *, method: str = "auto"
) -> int:
    """Insert ``rows``, skipping those whose key already exists; return how many were new.

    ``method`` is ``auto`` (``COPY`` on PostgreSQL for batches of ``COPY_MIN_ROWS`` or more, one
    ``executemany`` on SQLite), ``copy`` or ``insert`` (the multi-row ``INSERT ... RETURNING``,
    kept for small writes and for comparison in ``bench/write_path.py``).
    """
    if not rows:
        return 0
    dialect = conn.dialect.name
    if dialect == "postgresql":
        if method == "copy" or (method == "auto" and len(rows) >= COPY_MIN_ROWS):
            return copy_ignoring_duplicates(conn, table, rows)
        stmt: postgresql.Insert | sqlite.Insert = postgresql.insert(table).on_conflict_do_nothing()
    elif dialect == "sqlite":
        stmt = sqlite.insert(table).on_conflict_do_nothing()
        if method != "insert":
            # One prepared statement run per row (sqlite3's executemany sums the rows it changed):
            # no giant VALUES list to build, and SQLite's 32,766-parameter limit never applies.
            return int(conn.execute(stmt, list(rows)).rowcount)
    else:  # pragma: no cover - only the two supported databases
        raise NotImplementedError(f"unsupported database dialect {dialect!r}")
    # executemany rowcounts are unreliable across drivers; RETURNING yields exactly the new rows.
    key = next(iter(table.primary_key.columns))
    result = conn.execute(stmt.returning(key), list(rows))
    return len(result.all())


def copy_ignoring_duplicates(conn: Connection, table: Table, rows: Sequence[dict[str, Any]]) -> int:
    """PostgreSQL: ``COPY`` ``rows`` into a session-local staging table, then move them into
    ``table`` with ``INSERT ... ON CONFLICT DO NOTHING``; return how many were new.

    Idempotency is the table's unique key, exactly as with a plain insert: a redelivered batch
    (or a row repeated within the batch) is skipped. The staging table is emptied by the same
    statement that moves its rows, and everything runs in the caller's transaction, so a failure
    leaves nothing behind.
    """
    from psycopg import sql
    from psycopg.types.json import Json
    from sqlalchemy import JSON

    names = list(rows[0])
    json_cols = {c.name for c in table.columns if isinstance(c.type, JSON)}
    # One staging table per table and column list (callers may leave optional columns out).
    digest = hashlib.blake2b("\0".join(names).encode(), digest_size=4).hexdigest()
    stage = sql.Identifier(f"atalaia_stage_{table.name}_{digest}")
    cols = sql.SQL(", ").join(sql.Identifier(n) for n in names)
    raw = conn.connection.driver_connection
    assert raw is not None
    with raw.cursor() as cur:
        cur.execute(
            sql.SQL("CREATE TEMP TABLE IF NOT EXISTS {} AS SELECT {} FROM {} WITH NO DATA").format(
                stage, cols, sql.Identifier(table.name)
            )
        )
        with cur.copy(sql.SQL("COPY {} ({}) FROM STDIN").format(stage, cols)) as copy:
            for row in rows:
                copy.write_row([Json(row[n], dumps=storable_json) if n in json_cols else row[n] for n in names])
        cur.execute(
            sql.SQL(
                "WITH moved AS (DELETE FROM {stage} RETURNING {cols}) "
                "INSERT INTO {table} ({cols}) SELECT {cols} FROM moved ON CONFLICT DO NOTHING"
            ).format(stage=stage, cols=cols, table=sql.Identifier(table.name))
        )
        return max(cur.rowcount, 0)


def inference_row(event: InferenceEvent, ingested_at: datetime | None = None) -> dict[str, Any]:
    """The ``inference_events`` row of an event."""
    return {
        "event_id": str(event.event_id),
        "ts": event.ts,
        "service": event.service,
        "model_version": event.model_version,
        "messages": [m.model_dump() for m in event.messages],
        "response": event.response,
        "context": [p.model_dump() for p in event.context],
        "latency_ms": event.latency_ms,
        "prompt_tokens": event.prompt_tokens,
        "completion_tokens": event.completion_tokens,
        "cost": event.cost,
        "cache_hit": event.cache_hit,
        "reference": event.reference,
        "request_id": event.request_id,
        "metadata": event.metadata,
        "time_to_first_token_ms": event.time_to_first_token_ms,
        "provider": event.provider,
        "finish_reason": event.finish_reason,
        "caller": event.caller,
        "subject_id": event.subject_id,
        "ingested_at": ingested_at or utcnow(),
    }


def metric_row(metric: MetricEvent, created_at: datetime | None = None) -> dict[str, Any]:
    """The ``metrics`` row of a metric event."""
    return {
        "event_id": str(metric.source_event_id),
        "name": metric.name,
        "value": metric.value,
        "error": metric.error,
        "labels": metric.labels or None,
        "service": metric.service,
        "model_version": metric.model_version,
        "ts": metric.source_ts,
        "created_at": created_at or utcnow(),
        "sample_fraction": metric.sample_fraction,
    }


def feedback_row(event: FeedbackEvent) -> dict[str, Any]:
    """The ``feedback`` row of a feedback event."""
    return {
        "event_id": str(event.event_id),
        "inference_event_id": str(event.inference_event_id),
        "ts": event.ts,
        "rating": event.rating,
        "corrected_answer": event.corrected_answer,
        "comment": event.comment,
        "metadata": event.metadata,
        "caller": event.caller,
        "subject_id": event.subject_id,
        "ingested_at": utcnow(),
    }


def alert_row(event: AlertEvent) -> dict[str, Any]:
    """The ``alerts`` row of one alert transition."""
    return {
        "event_id": str(event.event_id),
        "alert_id": str(event.alert_id),
        "fingerprint": event.fingerprint,
        "rule": event.rule,
        "state": event.state,
        "severity": event.severity,
        "labels": event.labels,
        "annotations": event.annotations,
        "value": event.value,
        "threshold": event.threshold,
        "action": event.action,
        "started_at": event.started_at,
        "ts": event.ts,
    }


def store_inference_batch(
    conn: Connection, events: Iterable[InferenceEvent], metrics: Iterable[MetricEvent]
) -> tuple[int, int]:
    """Store events and their metrics in the caller's transaction; return (new events, new metrics)."""
    now = utcnow()
    n_events = insert_ignoring_duplicates(conn, t.inference_events, [inference_row(e, now) for e in events])
    n_metrics = insert_ignoring_duplicates(conn, t.metrics, [metric_row(m, now) for m in metrics])
    return n_events, n_metrics


def store_feedback_batch(conn: Connection, events: Iterable[FeedbackEvent]) -> int:
    """Store feedback events; return how many were new."""
    return insert_ignoring_duplicates(conn, t.feedback, [feedback_row(e) for e in events])


def store_alert(conn: Connection, event: AlertEvent) -> int:
    """Store one alert transition; return 1 if new, 0 if already stored."""
    return insert_ignoring_duplicates(conn, t.alerts, [alert_row(event)])


def table_counts(engine: Engine) -> dict[str, int]:
    """Row count of every Atalaia table."""
    with engine.connect() as conn:
        return {
            table.name: int(conn.execute(select(func.count()).select_from(table)).scalar_one())
            for table in t.metadata.sorted_tables
        }


def recent_alerts(
    engine: Engine, state: str | None = None, rule: str | None = None, limit: int = 50
) -> list[dict[str, Any]]:
    """Latest alert transitions, newest first, optionally filtered by state and rule."""
    query = select(t.alerts).order_by(t.alerts.c.ts.desc()).limit(limit)
    if state:
        query = query.where(t.alerts.c.state == state)
    if rule:
        query = query.where(t.alerts.c.rule == rule)
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(query)]


def active_model_version(engine: Engine) -> dict[str, Any] | None:
    """The most recently activated row of ``model_versions`` with status ``active``, if any."""
    query = (
        select(t.model_versions)
        .where(t.model_versions.c.status == "active")
        .order_by(t.model_versions.c.activated_at.desc())
        .limit(1)
    )
    with engine.connect() as conn:
        row = conn.execute(query).mappings().first()
    return dict(row) if row is not None else None


def model_version_folders(engine: Engine, versions: Iterable[str]) -> dict[str, str | None]:
    """The registry's ``artefact_path`` of each of ``versions`` that has a row (``None``: no folder)."""
    wanted = sorted(set(versions))
    if not wanted:
        return {}
    query = select(t.model_versions.c.version, t.model_versions.c.artefact_path).where(
        t.model_versions.c.version.in_(wanted)
    )
    with engine.connect() as conn:
        return {str(v): (str(p) if p else None) for v, p in conn.execute(query)}
