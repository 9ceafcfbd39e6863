"""metrics_ts_index: an index on metrics.ts for the window aggregation's time-range reads

The worker materializes tumbling-window aggregates every few seconds from the metrics of the last
closed windows (``consumers/windows.py``), a range of ``ts`` across every metric name. No index
led with ``ts`` (the keys end with it), so on PostgreSQL each pass read the whole week's
partition. PostgreSQL gets a BRIN index (rows arrive in about ``ts`` order, so it stays a few
pages and costs the write path almost nothing); created on the partitioned table, it reaches
every partition, the future ones included. SQLite gets a B-tree.

Revision ID: 0008_metrics_ts_index
Revises: 0007_partitions
Create Date: 2026-12-06
"""

from __future__ import annotations

from alembic import op

revision = "0008_metrics_ts_index"
down_revision = "0007_partitions"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_metrics_ts", "metrics", ["ts"], postgresql_using="brin")


def downgrade() -> None:
    op.drop_index("ix_metrics_ts", table_name="metrics")
