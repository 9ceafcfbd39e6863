"""feedback review: one approve/reject decision per correction (ATALAIA_FEEDBACK_REVIEW)

Revision ID: 0006_feedback_review
Revises: 0005_privacy
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_feedback_review"
down_revision = "0005_privacy"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "feedback_reviews",
        sa.Column("feedback_event_id", sa.String(length=36), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("reviewed_by", sa.String(length=200), nullable=False),
        sa.Column("reviewed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("feedback_event_id", name="pk_feedback_reviews"),
    )


def downgrade() -> None:
    op.drop_table("feedback_reviews")
