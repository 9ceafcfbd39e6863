"""partitions: inference_events and metrics partitioned by week on PostgreSQL; metrics.sample_fraction

PostgreSQL: each table is renamed aside, a partitioned twin is created (``LIKE`` the old one, keys
with ``ts``, the same index names), weekly partitions are made for the existing rows and four
weeks ahead plus a default partition, the rows are copied over and the old table is dropped:
existing rows are kept. See ``atalaia/storage/partitions.py`` for why ``ts`` joins the keys.

SQLite stays unpartitioned; ``metrics`` gets the column and the same unique key as PostgreSQL.

Revision ID: 0007_partitions
Revises: 0006_feedback_review
Create Date: 2026-12-06
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

from atalaia.storage.partitions import MAX_BACK_WEEKS, PERIOD, ensure_partitions

revision = "0007_partitions"
down_revision = "0006_feedback_review"
branch_labels = None
depends_on = None

#: Per table: the new keys (name, SQL) and the indexes (name, columns) of atalaia/storage/tables.py.
KEYS = {
    "inference_events": [("pk_inference_events", "PRIMARY KEY (event_id, ts)")],
    "metrics": [
        ("pk_metrics", "PRIMARY KEY (id, ts)"),
        ("uq_metrics_event_id_name_ts", "UNIQUE (event_id, name, ts)"),
    ],
}
OLD_KEYS = {
    "inference_events": [("pk_inference_events", "PRIMARY KEY (event_id)")],
    "metrics": [("pk_metrics", "PRIMARY KEY (id)"), ("uq_metrics_event_id_name", "UNIQUE (event_id, name)")],
}
INDEXES = {
    "inference_events": [
        ("ix_inference_events_model_version_ts", "model_version, ts"),
        ("ix_inference_events_ts", "ts"),
        ("ix_inference_events_subject_id", "subject_id"),
    ],
    "metrics": [("ix_metrics_name_ts", "name, ts"), ("ix_metrics_model_version_name_ts", "model_version, name, ts")],
}


def _swap(table: str, partitioned: bool, window: tuple[Any, Any] | None = None) -> None:
    """Rebuild ``table`` as a partitioned (or, going down, a plain) table, keeping its rows."""
    old = f"{table}_old"
    op.execute(f'ALTER TABLE "{table}" RENAME TO "{old}"')
    for name, _ in (OLD_KEYS if partitioned else KEYS)[table]:
        op.execute(f'ALTER TABLE "{old}" RENAME CONSTRAINT "{name}" TO "{name}_old"')
    for name, _ in INDEXES[table]:
        op.execute(f'DROP INDEX "{name}"')
    suffix = " PARTITION BY RANGE (ts)" if partitioned else ""
    op.execute(f'CREATE TABLE "{table}" (LIKE "{old}" INCLUDING DEFAULTS){suffix}')
    if table == "metrics" and partitioned:
        op.execute("ALTER TABLE metrics ADD COLUMN sample_fraction DOUBLE PRECISION NOT NULL DEFAULT 1")
    for name, sql in (KEYS if partitioned else OLD_KEYS)[table]:
        op.execute(f'ALTER TABLE "{table}" ADD CONSTRAINT "{name}" {sql}')
    for name, cols in INDEXES[table]:
        op.execute(f'CREATE INDEX "{name}" ON "{table}" ({cols})')
    conn = op.get_bind()
    if partitioned:
        op.execute(f'CREATE TABLE "{table}_default" PARTITION OF "{table}" DEFAULT')
        # Weekly partitions for the rows (up to two years back) and four weeks ahead, before the copy.
        assert window is not None
        ensure_partitions(conn, now=window[1], since=window[0])
    columns = [c["name"] for c in sa.inspect(conn).get_columns(old)]
    listed = ", ".join(f'"{c}"' for c in columns)
    # Going down, a row per key of the old one (a reused id under two times keeps the first).
    distinct = "" if partitioned else f"DISTINCT ON ({'event_id' if table == 'inference_events' else 'event_id, name'}) "
    order = "" if partitioned else f" ORDER BY {'event_id' if table == 'inference_events' else 'event_id, name'}, ts"
    op.execute(f'INSERT INTO "{table}" ({listed}) SELECT {distinct}{listed} FROM "{old}"{order}')
    if table == "metrics":
        # The id sequence belongs to the old column: hand it over before the old table goes.
        seq = conn.execute(sa.text("SELECT pg_get_serial_sequence('metrics_old', 'id')")).scalar()
        if seq:
            op.execute(f"ALTER SEQUENCE {seq} OWNED BY metrics.id")
    op.execute(f'DROP TABLE "{old}"')


def upgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name != "postgresql":
        with op.batch_alter_table("metrics") as batch:
            batch.add_column(sa.Column("sample_fraction", sa.Float(), nullable=False, server_default="1"))
            batch.drop_constraint("uq_metrics_event_id_name", type_="unique")
            batch.create_unique_constraint("uq_metrics_event_id_name_ts", ["event_id", "name", "ts"])
        return
    oldest: Any
    today: Any
    oldest, today = conn.execute(
        sa.text("SELECT least((SELECT min(ts) FROM inference_events), (SELECT min(ts) FROM metrics)), now()")
    ).one()
    since = max(oldest, today - MAX_BACK_WEEKS * PERIOD) if oldest is not None else today
    for table in ("inference_events", "metrics"):
        _swap(table, partitioned=True, window=(since, today))


def downgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name != "postgresql":
        with op.batch_alter_table("metrics") as batch:
            batch.drop_constraint("uq_metrics_event_id_name_ts", type_="unique")
            batch.create_unique_constraint("uq_metrics_event_id_name", ["event_id", "name"])
            batch.drop_column("sample_fraction")
        return
    for table in ("inference_events", "metrics"):
        _swap(table, partitioned=False)
        if table == "metrics":
            op.execute("ALTER TABLE metrics DROP COLUMN sample_fraction")
