"""privacy: audit table of data-subject requests, subject_id indexes for export and erasure

Revision ID: 0005_privacy
Revises: 0004
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_privacy"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "privacy_requests",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("subject_id", sa.String(length=200), nullable=True),
        sa.Column("requested_by", sa.String(length=200), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_privacy_requests"),
    )
    op.create_index("ix_privacy_requests_subject_id", "privacy_requests", ["subject_id"])
    op.create_index("ix_inference_events_subject_id", "inference_events", ["subject_id"])
    op.create_index("ix_feedback_subject_id", "feedback", ["subject_id"])


def downgrade() -> None:
    op.drop_index("ix_feedback_subject_id", table_name="feedback")
    op.drop_index("ix_inference_events_subject_id", table_name="inference_events")
    op.drop_index("ix_privacy_requests_subject_id", table_name="privacy_requests")
    op.drop_table("privacy_requests")
