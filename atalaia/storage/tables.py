"""The relational schema, identical on SQLite and PostgreSQL.

Changing a table here needs a new Alembic revision in ``migrations/versions``; a test compares the
migrated database with these definitions.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

# Explicit constraint names keep migrations portable (SQLite needs names to alter constraints).
metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
    }
)

UUID_LEN = 36

# On PostgreSQL ``inference_events`` and ``metrics`` are partitioned by week on ``ts`` (0007, see
# atalaia/storage/partitions.py), so their keys there include ``ts``: the primary keys are
# (event_id, ts) and (id, ts); SQLite keeps the ones declared here (stricter, same idempotency).
inference_events = Table(
    "inference_events",
    metadata,
    Column("event_id", String(UUID_LEN), primary_key=True),
    Column("ts", DateTime(timezone=True), nullable=False),
    Column("service", String(200), nullable=False),
    Column("model_version", String(200), nullable=False),
    Column("messages", JSON, nullable=False),
    Column("response", Text, nullable=False),
    Column("context", JSON, nullable=False),
    Column("latency_ms", Float, nullable=False),
    Column("prompt_tokens", Integer, nullable=False),
    Column("completion_tokens", Integer, nullable=False),
    Column("cost", Float, nullable=False),
    Column("cache_hit", Boolean, nullable=False),
    Column("reference", Text, nullable=True),
    Column("request_id", String(200), nullable=True),
    Column("metadata", JSON, nullable=False),
    Column("time_to_first_token_ms", Float, nullable=True),
    Column("provider", String(200), nullable=True),
    Column("finish_reason", String(64), nullable=True),
    Column("caller", String(200), nullable=True),
    Column("subject_id", String(200), nullable=True),
    Column("ingested_at", DateTime(timezone=True), nullable=False),
    Index(None, "model_version", "ts"),
    Index(None, "ts"),
    # Finds one subject's events for export and erasure (added in 0005_privacy).
    Index(None, "subject_id"),
)

metrics = Table(
    "metrics",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("event_id", String(UUID_LEN), nullable=False),
    Column("name", String(64), nullable=False),
    Column("value", Float, nullable=True),
    Column("error", Text, nullable=True),
    # Context of the score, e.g. the toxicity backend or the drift threshold (added in 0002).
    Column("labels", JSON, nullable=True),
    Column("service", String(200), nullable=False),
    Column("model_version", String(200), nullable=False),
    Column("ts", DateTime(timezone=True), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    # Share of events the metric's group scored when this row was taken (added in 0007): counts
    # and rates weight a row by 1 / sample_fraction; means and percentiles need no weight.
    Column("sample_fraction", Float, nullable=False, server_default="1"),
    # A metric's ts is its source event's, so the key with ts is as strict as (event_id, name).
    UniqueConstraint("event_id", "name", "ts"),
    Index(None, "name", "ts"),
    Index(None, "model_version", "name", "ts"),
    # The worker's window aggregation reads every metric of a time range (0008). BRIN on
    # PostgreSQL: rows arrive in about ts order, so block ranges summarise them in a few pages and
    # cost the COPY write almost nothing; SQLite makes it a plain B-tree.
    Index(None, "ts", postgresql_using="brin"),
)

feedback = Table(
    "feedback",
    metadata,
    Column("event_id", String(UUID_LEN), primary_key=True),
    Column("inference_event_id", String(UUID_LEN), nullable=False, index=True),
    Column("ts", DateTime(timezone=True), nullable=False),
    Column("rating", Integer, nullable=True),
    Column("corrected_answer", Text, nullable=True),
    Column("comment", Text, nullable=True),
    Column("metadata", JSON, nullable=False),
    Column("caller", String(200), nullable=True),
    Column("subject_id", String(200), nullable=True),
    Column("ingested_at", DateTime(timezone=True), nullable=False),
    Index(None, "subject_id"),
)

alerts = Table(
    "alerts",
    metadata,
    # One row per lifecycle transition; alert_id ties the transitions of one alert together.
    Column("event_id", String(UUID_LEN), primary_key=True),
    Column("alert_id", String(UUID_LEN), nullable=False, index=True),
    Column("fingerprint", String(64), nullable=False, index=True),
    Column("rule", String(200), nullable=False),
    Column("state", String(16), nullable=False),
    Column("severity", String(16), nullable=False),
    Column("labels", JSON, nullable=False),
    Column("annotations", JSON, nullable=False),
    Column("value", Float, nullable=True),
    Column("threshold", Float, nullable=True),
    Column("action", String(64), nullable=True),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("ts", DateTime(timezone=True), nullable=False),
    Index(None, "rule", "ts"),
)

model_versions = Table(
    "model_versions",
    metadata,
    Column("version", String(200), primary_key=True),
    Column("parent", String(200), nullable=True),
    Column("status", String(32), nullable=False),
    Column("artefact_path", Text, nullable=True),
    Column("quantization", String(32), nullable=True),
    Column("dataset_hash", String(64), nullable=True),
    Column("metrics", JSON, nullable=False),
    Column("size_bytes", BigInteger, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("activated_at", DateTime(timezone=True), nullable=True),
)

retrain_runs = Table(
    "retrain_runs",
    metadata,
    Column("run_id", String(UUID_LEN), primary_key=True),
    Column("status", String(32), nullable=False),
    Column("trigger", String(200), nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True), nullable=True),
    Column("steps", JSON, nullable=False),
    Column("dataset_hash", String(64), nullable=True),
    Column("candidate_version", String(200), nullable=True),
    Column("metrics", JSON, nullable=False),
    Column("error", Text, nullable=True),
)

embeddings = Table(
    "embeddings",
    metadata,
    # Kept for drift detection and similarity: one float32 vector per event and text kind.
    Column("event_id", String(UUID_LEN), primary_key=True),
    Column("kind", String(16), primary_key=True),
    Column("model_version", String(200), nullable=False),
    Column("ts", DateTime(timezone=True), nullable=False),
    Column("dim", Integer, nullable=False),
    Column("vector", LargeBinary, nullable=False),
    Index(None, "model_version", "kind", "ts"),
)

drift_state = Table(
    "drift_state",
    metadata,
    # Serialized detector per model version and text kind, so a restarted worker resumes.
    Column("model_version", String(200), primary_key=True),
    Column("kind", String(16), primary_key=True),
    Column("state", LargeBinary, nullable=False),
    Column("n_tests", Integer, nullable=False),
    Column("last_count", Integer, nullable=False),
    Column("threshold", Float, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

metric_windows = Table(
    "metric_windows",
    metadata,
    # Tumbling-window aggregates per model version and metric, materialized by the workers.
    Column("window_start", DateTime(timezone=True), primary_key=True),
    Column("window_s", Integer, primary_key=True),
    Column("model_version", String(200), primary_key=True),
    Column("name", String(64), primary_key=True),
    Column("count", Integer, nullable=False),
    Column("errors", Integer, nullable=False),
    Column("mean", Float, nullable=True),
    Column("p50", Float, nullable=True),
    Column("p95", Float, nullable=True),
    Column("p99", Float, nullable=True),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

# Silences mute notifications (not evaluation) for alerts whose labels match every matcher.
silences = Table(
    "silences",
    metadata,
    Column("silence_id", String(UUID_LEN), primary_key=True),
    Column("matchers", JSON, nullable=False),
    Column("created_by", String(200), nullable=False),
    Column("comment", Text, nullable=False),
    Column("starts_at", DateTime(timezone=True), nullable=False),
    Column("ends_at", DateTime(timezone=True), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expired_at", DateTime(timezone=True), nullable=True),
)

# One row per (alert transition, receiver): a failing receiver leaves the row pending and it is
# retried with backoff, so an alert is never lost because a receiver was down.
alert_deliveries = Table(
    "alert_deliveries",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("alert_event_id", String(UUID_LEN), nullable=False),
    Column("receiver", String(200), nullable=False),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", DateTime(timezone=True), nullable=False),
    Column("last_error", Text, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("delivered_at", DateTime(timezone=True), nullable=True),
    UniqueConstraint("alert_event_id", "receiver"),
    Index("ix_alert_deliveries_status_next_attempt_at", "status", "next_attempt_at"),
)

alert_acks = Table(
    "alert_acks",
    metadata,
    Column("alert_id", String(UUID_LEN), primary_key=True),
    Column("acked_by", String(200), nullable=False),
    Column("comment", Text, nullable=False),
    Column("ts", DateTime(timezone=True), nullable=False),
)

# A named lock row: one retraining run at a time across processes. A holder that stops
# heartbeating (crashed) is considered stale and its lock is taken over.
locks = Table(
    "locks",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("holder", String(200), nullable=False),
    Column("run_id", String(UUID_LEN), nullable=True),
    Column("acquired_at", DateTime(timezone=True), nullable=False),
    Column("heartbeat_at", DateTime(timezone=True), nullable=False),
)

# Audit of data-subject requests (export, erase) and retention runs: who asked, when, what went
# (added in 0005_privacy). Holds the subject id (a keyed hash), never the plain user id.
privacy_requests = Table(
    "privacy_requests",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("ts", DateTime(timezone=True), nullable=False),
    Column("action", String(32), nullable=False),
    Column("subject_id", String(200), nullable=True, index=True),
    Column("requested_by", String(200), nullable=False),
    Column("details", JSON, nullable=False),
)

feedback_reviews = Table(
    "feedback_reviews",
    metadata,
    # One decision per correction (`atalaia feedback review approve|reject`); a correction with a
    # corrected answer and no row here is pending. With ATALAIA_FEEDBACK_REVIEW on, only approved
    # corrections train; a rejected one never trains.
    Column("feedback_event_id", String(UUID_LEN), primary_key=True),
    Column("state", String(16), nullable=False),
    Column("reason", Text, nullable=True),
    Column("reviewed_by", String(200), nullable=False),
    Column("reviewed_at", DateTime(timezone=True), nullable=False),
)
