"""Idempotent writes and common reads.

Writes use ``INSERT ... ON CONFLICT DO NOTHING`` on each table's natural key, so a message
redelivered after a crash (Kafka is at-least-once) changes nothing: exactly once in effect.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, Table, func, select
from sqlalchemy.dialects import postgresql, sqlite

from atalaia.events import AlertEvent, FeedbackEvent, InferenceEvent, MetricEvent, utcnow
from atalaia.storage import tables as t


def as_utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; every stored time is UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def insert_ignoring_duplicates(conn: Connection, table: Table, rows: Sequence[dict[str, Any]]) -> int:
    """Insert ``rows``, skipping those whose key already exists; return how many were new."""
    if not rows:
        return 0
    dialect = conn.dialect.name
    stmt: postgresql.Insert | sqlite.Insert
    if dialect == "postgresql":
        stmt = postgresql.insert(table).on_conflict_do_nothing()
    elif dialect == "sqlite":
        stmt = sqlite.insert(table).on_conflict_do_nothing()
    else:  # pragma: no cover - only the two supported databases
        raise NotImplementedError(f"unsupported database dialect {dialect!r}")
    # executemany rowcounts are unreliable across drivers; RETURNING yields exactly the new rows.
    key = next(iter(table.primary_key.columns))
    result = conn.execute(stmt.returning(key), list(rows))
    return len(result.all())


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
