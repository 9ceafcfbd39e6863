"""Time partitions of the big tables on PostgreSQL (``inference_events``, ``metrics``).

Both are declaratively partitioned by ``RANGE (ts)`` (migration ``0007_partitions``): one
partition per week (Monday 00:00 UTC to the next Monday), named ``<table>_pYYYYMMDD`` after its
first day, created ``AHEAD_WEEKS`` ahead by the worker at start and by the retention job, plus a
``<table>_default`` partition so a row outside every partition (a far-future clock, an old
backfill) is stored, never refused. A partition created for a week the default already holds
rows of takes those rows over.

Why the keys include ``ts``: PostgreSQL enforces a unique constraint of a partitioned table only
if it contains the partition key, so ``inference_events`` is unique on ``(event_id, ts)`` and
``metrics`` on ``(event_id, name, ts)``. Idempotency still holds because an event's ``ts`` is set
once, by its producer, and travels in the message: a redelivered or re-spooled message carries the
same bytes, hence the same ``ts``, and ``ON CONFLICT DO NOTHING`` skips it. A metric's ``ts`` is its
source event's. (The same ``event_id`` sent again with another ``ts`` would be a second row: that
is a new event under a reused id, which no Atalaia producer makes.)

Retention drops a partition as a whole once its last week is older than the cutoff: no row-by-row
``DELETE``, no table bloat. SQLite stays unpartitioned; every function here is a no-op there.
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime, timedelta

from psycopg import sql
from sqlalchemy import Connection, text

from atalaia.events import utcnow

log = logging.getLogger(__name__)


def _ddl(conn: Connection, statement: sql.Composable, params: dict[str, str] | None = None) -> None:
    """Run DDL composed by psycopg (identifiers quoted, values as literals) on ``conn``'s transaction.

    DDL takes no bound parameters for names, so they are composed, never formatted into the text.
    """
    raw = conn.connection.driver_connection
    with raw.cursor() as cur:  # type: ignore[union-attr]
        cur.execute(statement, params)


TABLES = ("inference_events", "metrics")
PERIOD = timedelta(days=7)
AHEAD_WEEKS = 4
#: The oldest week the migration makes a partition for (older rows go to the default partition).
MAX_BACK_WEEKS = 104
_LOCK_KEY = 0x41_54_41_4C  # "ATAL": one partition maintainer at a time (worker start, retention job)
_NAME = re.compile(r"^(?P<table>\w+)_p(?P<day>\d{8})$")


def period_start(ts: datetime) -> datetime:
    """Monday 00:00 UTC of the week holding ``ts``.

    >>> period_start(datetime(2026, 12, 6, 13, 0, tzinfo=UTC)).isoformat()
    '2026-11-30T00:00:00+00:00'
    """
    day = ts.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return day - timedelta(days=day.weekday())


def is_partition(name: str) -> bool:
    """Whether ``name`` is one of the partitions this module makes (schema comparisons skip them).

    >>> is_partition("metrics_p20261130"), is_partition("metrics_default"), is_partition("metrics")
    (True, True, False)
    """
    match = _NAME.match(name)
    return bool(match and match["table"] in TABLES) or name in {f"{tb}_default" for tb in TABLES}


def partition_name(table: str, start: datetime) -> str:
    """``inference_events_p20261130`` for the week starting 2026-11-30."""
    return f"{table}_p{start:%Y%m%d}"


def is_partitioned(conn: Connection, table: str) -> bool:
    """Whether ``table`` is a partitioned table (never on SQLite)."""
    if conn.dialect.name != "postgresql":
        return False
    found = conn.execute(
        text(
            "SELECT 1 FROM pg_partitioned_table p JOIN pg_class c ON c.oid = p.partrelid "
            "WHERE c.relname = :t AND pg_table_is_visible(c.oid)"
        ),
        {"t": table},
    ).first()
    return found is not None


def partitions(conn: Connection, table: str) -> dict[str, tuple[datetime, datetime]]:
    """The weekly partitions of ``table``: name to ``(start, end)`` (the default one left out)."""
    if not is_partitioned(conn, table):
        return {}
    names: list[str] = list(
        conn.execute(
            text(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = :t AND pg_table_is_visible(p.oid)"
            ),
            {"t": table},
        ).scalars()
    )
    out = {}
    for name in names:
        match = _NAME.match(name)
        if match and match["table"] == table:
            start = datetime.strptime(match["day"], "%Y%m%d").replace(tzinfo=UTC)
            out[name] = (start, start + PERIOD)
    return out


def _create(conn: Connection, table: str, start: datetime) -> str:
    name = partition_name(table, start)
    lo, hi = start.isoformat(), (start + PERIOD).isoformat()
    # Built apart and attached: rows of this week already in the default partition move in first
    # (attaching checks the default holds none), so a late partition never fails the write path.
    new, parent, default = sql.Identifier(name), sql.Identifier(table), sql.Identifier(f"{table}_default")
    _ddl(conn, sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS)").format(new, parent))
    _ddl(
        conn,
        sql.SQL(
            "WITH moved AS (DELETE FROM {} WHERE ts >= %(lo)s AND ts < %(hi)s RETURNING *) "
            "INSERT INTO {} SELECT * FROM moved"
        ).format(default, new),
        {"lo": lo, "hi": hi},
    )
    _ddl(
        conn,
        sql.SQL("ALTER TABLE {} ATTACH PARTITION {} FOR VALUES FROM ({}) TO ({})").format(
            parent, new, sql.Literal(lo), sql.Literal(hi)
        ),
    )
    return name


def ensure_partitions(
    conn: Connection, now: datetime | None = None, ahead: int = AHEAD_WEEKS, since: datetime | None = None
) -> list[str]:
    """Create the weekly partitions from ``since`` (default: this week) to ``ahead`` weeks after
    ``now`` that do not exist yet; return their names. Runs in the caller's transaction."""
    now = now or utcnow()
    created: list[str] = []
    tables = [tb for tb in TABLES if is_partitioned(conn, tb)]
    if not tables:
        return created
    conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK_KEY})
    first = period_start(since or now)
    last = period_start(now) + ahead * PERIOD
    for table in tables:
        have = partitions(conn, table)
        week = first
        while week <= last:
            if partition_name(table, week) not in have:
                created.append(_create(conn, table, week))
            week += PERIOD
    if created:
        log.info("partitions created", extra={"partitions": created})
    return created


def drop_partitions_before(conn: Connection, table: str, cutoff: datetime) -> list[str]:
    """Drop the partitions of ``table`` whose whole week is older than ``cutoff``; return their names."""
    dropped = []
    for name, (_, end) in sorted(partitions(conn, table).items()):
        if end <= cutoff:
            _ddl(conn, sql.SQL("DROP TABLE {}").format(sql.Identifier(name)))
            dropped.append(name)
    if dropped:
        log.info("partitions dropped", extra={"table": table, "partitions": dropped, "cutoff": cutoff.isoformat()})
    return dropped
