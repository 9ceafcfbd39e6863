"""event schema version 2: time to first token, provider, finish reason, caller, subject

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("inference_events") as batch:
        batch.add_column(sa.Column("time_to_first_token_ms", sa.Float(), nullable=True))
        batch.add_column(sa.Column("provider", sa.String(length=200), nullable=True))
        batch.add_column(sa.Column("finish_reason", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("caller", sa.String(length=200), nullable=True))
        batch.add_column(sa.Column("subject_id", sa.String(length=200), nullable=True))
    with op.batch_alter_table("feedback") as batch:
        batch.add_column(sa.Column("caller", sa.String(length=200), nullable=True))
        batch.add_column(sa.Column("subject_id", sa.String(length=200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("feedback") as batch:
        batch.drop_column("subject_id")
        batch.drop_column("caller")
    with op.batch_alter_table("inference_events") as batch:
        for name in ("subject_id", "caller", "finish_reason", "provider", "time_to_first_token_ms"):
            batch.drop_column(name)
