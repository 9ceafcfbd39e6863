"""The ``retrain_runs`` record of a run: status, trigger, and each step with timings and details."""

from __future__ import annotations

import logging
import time
import traceback
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, insert, select, update

from atalaia.events import utcnow
from atalaia.storage import tables as t

log = logging.getLogger(__name__)

#: Final statuses; ``running`` is the only open one.
FINAL = ("deployed", "rejected", "skipped", "failed", "crashed")


class RunRecorder:
    """Writes one run's row as it goes, so a crash leaves a record of how far it got."""

    def __init__(self, engine: Engine, trigger: str, run_id: str | None = None) -> None:
        self.engine = engine
        self.run_id = run_id or str(uuid.uuid4())
        self.trigger = trigger
        self.steps: list[dict[str, Any]] = []
        self.metrics: dict[str, Any] = {}

    def start(self) -> None:
        """Insert the row with status ``running``."""
        with self.engine.begin() as conn:
            conn.execute(
                insert(t.retrain_runs).values(
                    run_id=self.run_id,
                    status="running",
                    trigger=self.trigger[:200],
                    started_at=utcnow(),
                    finished_at=None,
                    steps=[],
                    dataset_hash=None,
                    candidate_version=None,
                    metrics={},
                    error=None,
                )
            )

    def _save(self, **values: Any) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(t.retrain_runs)
                .where(t.retrain_runs.c.run_id == self.run_id)
                .values(steps=list(self.steps), metrics=dict(self.metrics), **values)
            )

    @contextmanager
    def step(self, name: str) -> Iterator[dict[str, Any]]:
        """Record a step: ``running`` while it works, then ``ok`` or ``failed`` with its seconds.

        The yielded dict is the step's ``details``; fill it in.
        """
        details: dict[str, Any] = {}
        entry: dict[str, Any] = {
            "name": name,
            "status": "running",
            "started_at": utcnow().isoformat(),
            "details": details,
        }
        self.steps.append(entry)
        self._save()
        t0 = time.perf_counter()
        log.info("retrain step started", extra={"run_id": self.run_id, "step": name})
        try:
            yield details
        except BaseException as exc:
            entry.update(
                status="failed", seconds=round(time.perf_counter() - t0, 3), error=f"{type(exc).__name__}: {exc}"
            )
            self._save()
            raise
        entry.update(status="ok", seconds=round(time.perf_counter() - t0, 3))
        self._save()
        log.info("retrain step done", extra={"run_id": self.run_id, "step": name, "seconds": entry["seconds"]})

    def set(self, **values: Any) -> None:
        """Update columns such as ``dataset_hash`` or ``candidate_version``."""
        self._save(**values)

    def finish(self, status: str, error: str | None = None) -> None:
        """Close the run with a final status."""
        assert status in FINAL, status
        self._save(status=status, finished_at=utcnow(), error=error)
        log.info("retrain run finished", extra={"run_id": self.run_id, "status": status, "error": error})

    def fail(self, exc: BaseException) -> None:
        """Close the run as failed with the exception and the end of its traceback."""
        tb = "".join(traceback.format_exception(exc))[-4000:]
        self.finish("failed", error=f"{type(exc).__name__}: {exc}\n{tb}")


def mark_crashed_runs(engine: Engine, except_run: str) -> list[str]:
    """Close runs left ``running`` by a dead process; call only while holding the retrain lock."""
    with engine.begin() as conn:
        ids = [
            r[0]
            for r in conn.execute(
                select(t.retrain_runs.c.run_id).where(
                    t.retrain_runs.c.status == "running", t.retrain_runs.c.run_id != except_run
                )
            )
        ]
        if ids:
            conn.execute(
                update(t.retrain_runs)
                .where(t.retrain_runs.c.run_id.in_(ids))
                .values(
                    status="crashed",
                    finished_at=utcnow(),
                    error="the process running it died; recovered by the next run",
                )
            )
    for run_id in ids:
        log.warning("marked a crashed retrain run", extra={"run_id": run_id})
    return ids


def last_run(engine: Engine, statuses: tuple[str, ...]) -> dict[str, Any] | None:
    """The most recent run with one of ``statuses``."""
    with engine.connect() as conn:
        row = (
            conn.execute(
                select(t.retrain_runs)
                .where(t.retrain_runs.c.status.in_(statuses))
                .order_by(t.retrain_runs.c.started_at.desc())
                .limit(1)
            )
            .mappings()
            .first()
        )
    return dict(row) if row is not None else None


def recent_runs(engine: Engine, limit: int = 20) -> list[dict[str, Any]]:
    """The latest runs, newest first."""
    with engine.connect() as conn:
        rows = conn.execute(select(t.retrain_runs).order_by(t.retrain_runs.c.started_at.desc()).limit(limit)).mappings()
        return [dict(r) for r in rows]


def get_run(engine: Engine, run_id: str) -> dict[str, Any] | None:
    """One run's row."""
    with engine.connect() as conn:
        row = conn.execute(select(t.retrain_runs).where(t.retrain_runs.c.run_id == run_id)).mappings().first()
    return dict(row) if row is not None else None


def since(row: dict[str, Any] | None) -> datetime | None:
    """The start of a run, if any (the "new data since" boundary)."""
    return row["started_at"] if row else None
