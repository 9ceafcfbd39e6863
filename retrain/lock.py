"""A lock row in the database: one retraining run at a time, across processes and machines.

A row in ``locks`` names its holder (``host:pid``) and carries a heartbeat. The holder refreshes
the heartbeat while it works; a lock whose heartbeat is older than ``stale_after_s`` — or whose
holder is a dead process on this host — belongs to a crashed run and is taken over. The takeover
is a compare-and-set on the old heartbeat, so two processes recovering the same stale lock cannot
both win.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any

from sqlalchemy import Engine, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from atalaia.events import utcnow
from atalaia.storage import tables as t
from atalaia.storage.repository import as_utc

log = logging.getLogger(__name__)

RETRAIN_LOCK = "retrain"


class LockHeld(RuntimeError):
    """Another live process holds the lock."""

    def __init__(self, name: str, holder: str, run_id: str | None, heartbeat_at: datetime) -> None:
        super().__init__(
            f"lock {name!r} is held by {holder} (run {run_id or '-'}, last heartbeat {heartbeat_at.isoformat()})"
        )
        self.holder = holder
        self.run_id = run_id


def this_holder() -> str:
    """``host:pid`` of this process."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _holder_is_dead(holder: str) -> bool:
    """True when ``holder`` is a process on this host that no longer exists."""
    host, _, pid = holder.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def is_stale(row: Mapping[Any, Any], stale_after_s: float) -> bool:
    """Whether a ``locks`` row belongs to a crashed holder.

    Its heartbeat is older than ``stale_after_s``, or its holder is a process on this host that
    no longer exists.
    """
    beat = as_utc(row["heartbeat_at"])
    return utcnow() - beat > timedelta(seconds=stale_after_s) or _holder_is_dead(str(row["holder"]))


@dataclass
class StaleLock:
    """What a takeover replaced: the crashed holder and its run."""

    holder: str
    run_id: str | None


class DbLock:
    """A named lock row with a heartbeat thread.

    Examples
    --------
    >>> from atalaia.storage.db import get_engine, upgrade
    >>> url = "sqlite://"  # doctest: +SKIP
    >>> with DbLock(get_engine(url), "retrain", run_id="r1") as lock:  # doctest: +SKIP
    ...     pass
    """

    def __init__(
        self,
        engine: Engine,
        name: str = RETRAIN_LOCK,
        *,
        run_id: str | None = None,
        stale_after_s: float = 120.0,
        heartbeat_s: float = 10.0,
        holder: str | None = None,
    ) -> None:
        self.engine = engine
        self.name = name
        self.run_id = run_id
        self.stale_after_s = stale_after_s
        self.heartbeat_s = heartbeat_s
        self.holder = holder or this_holder()
        self.recovered: StaleLock | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> None:
        """Take the lock, recovering it from a crashed holder; raise :class:`LockHeld` otherwise."""
        now = utcnow()
        row = {"name": self.name, "holder": self.holder, "run_id": self.run_id, "acquired_at": now, "heartbeat_at": now}
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(t.locks).values(**row))
        except IntegrityError:
            self._take_over_if_stale(row)
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name=f"lock-{self.name}", daemon=True)
        self._thread.start()

    def _take_over_if_stale(self, row: Mapping[str, object]) -> None:
        with self.engine.begin() as conn:
            current = conn.execute(select(t.locks).where(t.locks.c.name == self.name)).mappings().first()
            if current is None:  # released between our insert and this read
                conn.execute(insert(t.locks).values(**row))
                return
            beat = as_utc(current["heartbeat_at"])
            stale = is_stale(current, self.stale_after_s)
            if current["holder"] == self.holder:
                stale = True  # re-entrant for the same process (a retried acquire)
            if not stale:
                raise LockHeld(self.name, current["holder"], current["run_id"], beat)
            taken = conn.execute(
                update(t.locks)
                .where(t.locks.c.name == self.name, t.locks.c.heartbeat_at == current["heartbeat_at"])
                .values(**row)
            ).rowcount
            if taken != 1:
                raise LockHeld(self.name, "another recovering process", None, beat)
        self.recovered = StaleLock(current["holder"], current["run_id"])
        log.warning(
            "recovered a stale lock from a crashed holder",
            extra={"lock": self.name, "holder": current["holder"], "run_id": current["run_id"]},
        )

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                with self.engine.begin() as conn:
                    conn.execute(
                        update(t.locks)
                        .where(t.locks.c.name == self.name, t.locks.c.holder == self.holder)
                        .values(heartbeat_at=utcnow())
                    )
            except Exception as exc:  # noqa: BLE001 - a database blip must not kill the run; retry next beat
                log.warning("lock heartbeat failed", extra={"lock": self.name, "error": str(exc)})

    def release(self) -> None:
        """Stop the heartbeat and delete the row if this process still holds it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        with self.engine.begin() as conn:
            conn.execute(delete(t.locks).where(t.locks.c.name == self.name, t.locks.c.holder == self.holder))

    def __enter__(self) -> DbLock:
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def current_lock(engine: Engine, name: str = RETRAIN_LOCK) -> dict[str, object] | None:
    """The lock row, if any (for status displays)."""
    with engine.connect() as conn:
        row = conn.execute(select(t.locks).where(t.locks.c.name == name)).mappings().first()
    return dict(row) if row is not None else None
