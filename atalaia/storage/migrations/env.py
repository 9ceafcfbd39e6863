"""Alembic environment: runs migrations on the URL set by :func:`atalaia.storage.db.alembic_config`."""

from __future__ import annotations

from alembic import context

from atalaia.storage.db import get_engine
from atalaia.storage.tables import metadata

config = context.config
url = config.get_main_option("sqlalchemy.url")
assert url, "sqlalchemy.url must be set"

with get_engine(url).connect() as connection:
    # render_as_batch lets ALTERs work on SQLite, keeping one migration for both databases.
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
