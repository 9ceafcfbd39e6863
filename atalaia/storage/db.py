"""Engines and schema migrations."""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, inspect

from atalaia.events import finite_json

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


def storable_json(value: Any) -> str:
    """JSON text for a JSON column: non-finite numbers (a NaN loss, an overflowed perplexity)
    become ``null``, since PostgreSQL's ``json`` refuses Python's ``NaN``/``Infinity``.

    >>> storable_json({"perplexity": float("inf"), "loss": 1.5})
    '{"perplexity": null, "loss": 1.5}'
    """
    try:
        # Every inference row's messages and context pass here: walk the value only when it holds
        # a non-finite number (rare), not on every row.
        return json.dumps(value, allow_nan=False)
    except ValueError:
        return json.dumps(finite_json(value), allow_nan=False)


@functools.lru_cache(maxsize=8)
def get_engine(url: str) -> Engine:
    """One pooled engine per URL and process.

    SQLite gets WAL and a busy timeout so the worker, monitor and CLI can share one file.
    """
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30}, json_serializer=storable_json)

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5, json_serializer=storable_json)


def alembic_config(url: str):  # type: ignore[no-untyped-def]
    """An Alembic config pointing at the packaged migrations and ``url``."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    # '%' must be escaped for configparser; passwords may contain it.
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> str | None:
    """Apply migrations up to ``revision``; return the resulting revision."""
    from alembic import command
    from alembic.runtime.migration import MigrationContext

    command.upgrade(alembic_config(url), revision)
    with get_engine(url).connect() as conn:
        current = MigrationContext.configure(conn).get_current_revision()
    log.info("database upgraded", extra={"revision": current})
    return current


def current_revision(url: str) -> str | None:
    """The database's Alembic revision, or None if it was never migrated."""
    from alembic.runtime.migration import MigrationContext

    with get_engine(url).connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def has_schema(url: str) -> bool:
    """True when the tables exist (``atalaia db upgrade`` has run)."""
    return inspect(get_engine(url)).has_table("inference_events")


def redact_url(url: str) -> str:
    """The URL with its password hidden, safe for logs.

    >>> redact_url("postgresql+psycopg://u:secret@h:5432/db")
    'postgresql+psycopg://u:***@h:5432/db'
    """
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
