"""Canaries as the dashboard and the report show them: the split, requests per version, the verdict.

A canary with a traffic split is recorded in its candidate's registry row
(``model_versions.metrics["canary"]``, written by ``retrain/canary.py``): the share, the mode,
when it started and ended, and the final verdict with each metric's confidence interval
(``metrics["canary_progress"]`` holds the latest look while it runs). Requests per version are
counted from ``inference_events`` over the canary's period; answers flagged ``shadow`` (shadow
mode: scored, never returned) are counted apart.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, select

from atalaia.events import utcnow
from atalaia.storage import tables as t
from atalaia.storage.repository import as_utc

#: Most shadow flags read per version to count shadow answers (metadata is JSON: counted here,
#: the same on SQLite and PostgreSQL).
MAX_SHADOW_ROWS = 50_000


def _ts(value: Any) -> datetime | None:
    if not value:
        return None
    return as_utc(datetime.fromisoformat(str(value)))


def canary_summaries(conn: Connection, since: datetime | None = None) -> list[dict[str, Any]]:
    """Every traffic-split canary started after ``since`` (all when None), newest first.

    Each entry: ``candidate``, ``parent``, ``share``, ``mode``, ``state`` (``running`` or
    ``ended``), ``started_at``, ``ended_at``, ``decision`` (``promote``, ``rollback``,
    ``timeout``, or ``wait`` while running), ``reasons``, ``tests`` (per metric: difference,
    confidence bounds, margin, samples, outcome), ``samples`` (per metric the parent has: the
    samples of each arm, ``candidate`` and ``parent``, judged yet or not), ``horizon`` (when it
    ends without a verdict: ``max_samples`` per arm, ``max_s``, ``ends_by``; empty for canaries
    from before it was recorded) and ``requests`` (answers per version in the period, with
    ``shadow`` the candidate's shadow answers).
    """
    rows = conn.execute(select(t.model_versions.c.version, t.model_versions.c.metrics)).all()
    out = []
    for version, stored in rows:
        metrics: dict[str, Any] = stored if isinstance(stored, dict) else {}
        final: dict[str, Any] = metrics["canary"] if isinstance(metrics.get("canary"), dict) else {}
        progress: dict[str, Any] = (
            metrics["canary_progress"] if isinstance(metrics.get("canary_progress"), dict) else {}
        )
        # Running: metrics["canary"] is the state itself; ended: the final summary holds it.
        state = final.get("state") if isinstance(final.get("state"), dict) else final
        if not isinstance(state, dict) or "started_at" not in state:
            continue
        started, ended = _ts(state.get("started_at")), _ts(state.get("ended_at"))
        if started is None or (since is not None and started < since):
            continue
        summary = final if "decision" in final else progress
        # The latest check's horizon (settings are read at every check), else the one at the start.
        horizon = summary.get("horizon") or state.get("horizon") or {}
        parent = str(state.get("parent") or "")
        out.append(
            {
                "candidate": str(version),
                "parent": parent,
                "share": state.get("share"),
                "mode": state.get("mode", "split"),
                "state": state.get("state", "running"),
                "started_at": started.isoformat(),
                "ended_at": ended.isoformat() if ended else None,
                "decision": summary.get("decision", "wait"),
                "reasons": summary.get("reasons", []),
                "tests": summary.get("tests", {}),
                "samples": summary.get("samples", {}),
                "horizon": horizon if isinstance(horizon, dict) else {},
                "requests": _requests(conn, (str(version), parent), started, ended or utcnow()),
            }
        )
    out.sort(key=lambda c: c["started_at"], reverse=True)
    return out


def _requests(conn: Connection, versions: tuple[str, str], start: datetime, end: datetime) -> dict[str, int]:
    ev = t.inference_events
    period = (ev.c.ts >= start, ev.c.ts <= end)
    counts = {v: 0 for v in versions if v}
    query = (
        select(ev.c.model_version, func.count())
        .where(ev.c.model_version.in_(list(counts)), *period)
        .group_by(ev.c.model_version)
    )
    for version, n in conn.execute(query).tuples():
        counts[str(version)] = int(n)
    flags: Iterable[Any] = conn.execute(
        select(ev.c.metadata).where(ev.c.model_version == versions[0], *period).limit(MAX_SHADOW_ROWS)
    ).scalars()
    counts["shadow"] = sum(1 for m in flags if isinstance(m, dict) and m.get("shadow"))
    return counts
