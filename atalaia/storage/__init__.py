"""Storage: the relational schema (SQLAlchemy 2 Core tables), migrations (Alembic) and idempotent writes."""

from __future__ import annotations
