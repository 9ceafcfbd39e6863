"""Model versions and retraining runs in the read model: deploys, versions seen, runs."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, select

from atalaia.storage import tables as t
from atalaia.storage.readmodel.ranges import epoch_ms
from atalaia.storage.repository import as_utc


@dataclass
class Deploy:
    """A model version that became active: a deploy, or a rollback to an older version."""

    ts: datetime
    version: str
    kind: str
    parent: str | None = None
    reason: str = ""


@dataclass
class Run:
    """One retraining run with its gate decision."""

    run_id: str
    status: str
    trigger: str
    started_at: datetime
    finished_at: datetime | None
    candidate_version: str | None
    active_version: str | None
    candidate: dict[str, float]
    active: dict[str, float]
    promote: bool | None
    reasons: list[str]
    error: str | None
    steps: list[dict[str, Any]]


def deploys(conn: Connection, since: datetime, until: datetime, events: Iterable[Any] = ()) -> list[dict[str, Any]]:
    """Model deploys in the range, oldest first: activations in ``model_versions`` and model events.

    A ``deploy`` or ``rollback`` event and the activation row of the same version within a minute
    are one deploy; the event is kept (it says which kind it was and why).
    """
    mv = t.model_versions
    rows = conn.execute(
        select(mv.c.version, mv.c.parent, mv.c.status, mv.c.activated_at).where(
            mv.c.activated_at.is_not(None), mv.c.activated_at >= since, mv.c.activated_at <= until
        )
    ).all()
    out: list[dict[str, Any]] = []
    for ev in events:
        ts = as_utc(ev.ts)
        if since <= ts <= until:
            out.append(
                {
                    "ts": epoch_ms(ts),
                    "time": ts.isoformat(),
                    "model_version": ev.model_version,
                    "kind": ev.type,
                    "previous_version": ev.previous_version,
                    "reason": ev.reason,
                    "source": "models topic",
                }
            )
    for row in rows:
        at = epoch_ms(row.activated_at)
        if any(d["model_version"] == row.version and abs(d["ts"] - at) < 60_000 for d in out):
            continue
        out.append(
            {
                "ts": at,
                "time": as_utc(row.activated_at).isoformat(),
                "model_version": row.version,
                "kind": "activated",
                "previous_version": row.parent,
                "reason": f"status {row.status}",
                "source": "model_versions",
            }
        )
    out.sort(key=lambda d: d["ts"])
    return out


def model_versions_seen(conn: Connection, since: datetime, until: datetime) -> list[str]:
    """Model versions with metric windows in the range, plus the registered ones, sorted."""
    mw = t.metric_windows
    found: set[str] = set(
        conn.execute(
            select(mw.c.model_version).where(mw.c.window_start >= since, mw.c.window_start <= until).distinct()
        ).scalars()
    )
    found |= set(conn.execute(select(t.model_versions.c.version)).scalars())
    return sorted(found)


def latest_run(engine: Engine, since: datetime) -> dict[str, Any] | None:
    """The newest retrain run started since ``since`` (``status``, ``steps``, ...), or ``None``."""
    r = t.retrain_runs
    with engine.connect() as conn:
        row = conn.execute(select(r).where(r.c.started_at >= since).order_by(r.c.started_at.desc())).mappings().first()
    return dict(row) if row else None


def deploy_history(conn: Connection, start: datetime, end: datetime) -> tuple[list[Deploy], list[dict[str, Any]]]:
    """Deploys and rollbacks in the range, told apart from ``model_versions``, and the registry rows."""
    registry = [
        dict(r) for r in conn.execute(select(t.model_versions).order_by(t.model_versions.c.created_at)).mappings()
    ]
    rolled_back = [r for r in registry if r["status"] == "rolled_back"]
    deploys = []
    for row in registry:
        if row["activated_at"] is None:
            continue
        ts = as_utc(row["activated_at"])
        if not start <= ts <= end:
            continue
        # `roll_back` re-activates the parent, so a version activated after a child of it was
        # deployed and rolled back is a rollback; a version without a parent that becomes active
        # is the base model being registered (it was serving already), not a deploy.
        undone = [
            r
            for r in rolled_back
            if r["parent"] == row["version"] and r["activated_at"] is not None and as_utc(r["activated_at"]) < ts
        ]
        if undone:
            reason = str((undone[-1]["metrics"] or {}).get("rollback_reason", ""))
            deploys.append(Deploy(ts, row["version"], "rollback", row["parent"], reason))
        elif row["parent"] is not None:
            deploys.append(Deploy(ts, row["version"], "deploy", row["parent"]))
    return sorted(deploys, key=lambda d: d.ts), registry


def finite_floats(value: Any) -> dict[str, float]:
    """The finite numbers of a JSON object (scores), as floats; ``{}`` for anything else.

    >>> finite_floats({"rouge_l": 0.3, "n": 8, "ok": True, "x": "y"})
    {'rouge_l': 0.3, 'n': 8.0}
    """
    if not isinstance(value, dict):
        return {}
    out = {}
    for key, item in value.items():
        if isinstance(item, int | float) and not isinstance(item, bool) and math.isfinite(item):
            out[str(key)] = float(item)
    return out


def retrain_runs(conn: Connection, start: datetime, end: datetime) -> list[Run]:
    """Retraining runs that overlap the range, with their gate decision."""
    rows = conn.execute(
        select(t.retrain_runs)
        .where(t.retrain_runs.c.started_at >= start - timedelta(hours=1), t.retrain_runs.c.started_at <= end)
        .order_by(t.retrain_runs.c.started_at)
    ).mappings()
    runs = []
    for row in rows:
        steps = [s for s in (row["steps"] or []) if isinstance(s, dict)]
        gate = next((s.get("details") or {} for s in steps if s.get("name") == "gate"), {})
        finished = as_utc(row["finished_at"]) if row["finished_at"] is not None else None
        if finished is not None and finished < start:
            continue
        reasons = gate.get("reasons") or (row["metrics"] or {}).get("reject_reasons") or []
        runs.append(
            Run(
                run_id=str(row["run_id"]),
                status=row["status"],
                trigger=row["trigger"],
                started_at=as_utc(row["started_at"]),
                finished_at=finished,
                candidate_version=row["candidate_version"],
                active_version=gate.get("active_version"),
                candidate=finite_floats(gate.get("candidate") or (row["metrics"] or {}).get("candidate")),
                active=finite_floats(gate.get("active") or (row["metrics"] or {}).get("active")),
                promote=gate.get("promote"),
                reasons=[str(r) for r in reasons] if isinstance(reasons, list) else [str(reasons)],
                error=row["error"],
                steps=steps,
            )
        )
    return runs
