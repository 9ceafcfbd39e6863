"""Reading the alert history and acknowledging alerts (tables ``alerts`` and ``alert_acks``).

Shared by ``atalaia alerts`` and the monitor's HTTP API. An acknowledgement records that someone
looks at an alert: it is shown beside the alert, and an acknowledged firing alert is no longer
re-notified (its resolution still is).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, select

from atalaia.events import utcnow
from atalaia.storage import repository
from atalaia.storage import tables as t
from atalaia.storage.readmodel import latest_alert_rows
from atalaia.storage.repository import as_utc

STATES = ("pending", "firing", "resolved")


class AlertNotFound(LookupError):
    """No alert has this id."""


@dataclass(frozen=True)
class AlertFilter:
    """Which alert transitions to list; every field is optional."""

    state: str | None = None
    rule: str | None = None
    severity: str | None = None
    model_version: str | None = None
    since: datetime | None = None
    current: bool = False
    limit: int = 50


def _row(row: Any) -> dict[str, Any]:
    out = dict(row)
    for key in ("ts", "started_at"):
        out[key] = as_utc(out[key])
    return out


def list_alerts(engine: Engine, where: AlertFilter | None = None) -> list[dict[str, Any]]:
    """Alert transitions, newest first, with their acknowledgement (``ack``: None or a dict).

    With ``current``, only the latest transition of each alert is considered, so
    ``state="firing", current=True`` lists the alerts firing now. ``model_version`` matches the
    alert's ``model_version`` label.
    """
    f = where or AlertFilter()
    if f.state is not None and f.state not in STATES:
        raise ValueError(f"state must be one of {', '.join(STATES)}, got {f.state!r}")
    a = t.alerts
    query = select(a)
    if f.current:
        query = latest_alert_rows(query)
    if f.state:
        query = query.where(a.c.state == f.state)
    if f.rule:
        query = query.where(a.c.rule == f.rule)
    if f.severity:
        query = query.where(a.c.severity == f.severity)
    if f.since is not None:
        query = query.where(a.c.ts >= f.since)
    if f.model_version is not None:
        # JSON field access: ->> on PostgreSQL, json_extract on SQLite.
        query = query.where(a.c.labels["model_version"].as_string() == f.model_version)
    query = query.order_by(a.c.ts.desc(), a.c.event_id).limit(f.limit)
    with engine.connect() as conn:
        rows = [_row(r) for r in conn.execute(query).mappings()]
    acks = acks_for(engine, {r["alert_id"] for r in rows})
    for r in rows:
        r["ack"] = acks.get(r["alert_id"])
    return rows


def get_alert(engine: Engine, alert_id: str) -> dict[str, Any]:
    """One alert: its transitions (oldest first), current state and acknowledgement."""
    with engine.connect() as conn:
        rows = [
            _row(r)
            for r in conn.execute(select(t.alerts).where(t.alerts.c.alert_id == alert_id).order_by(t.alerts.c.ts))
            .mappings()
            .all()
        ]
    if not rows:
        raise AlertNotFound(f"no alert with id {alert_id!r}")
    last = rows[-1]
    return {
        "alert_id": alert_id,
        "rule": last["rule"],
        "state": last["state"],
        "severity": last["severity"],
        "labels": last["labels"],
        "started_at": last["started_at"],
        "transitions": rows,
        "ack": acks_for(engine, [alert_id]).get(alert_id),
    }


def acks_for(engine: Engine, alert_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Acknowledgements of these alerts, by alert id."""
    ids = sorted(set(alert_ids))
    if not ids:
        return {}
    with engine.connect() as conn:
        rows = conn.execute(select(t.alert_acks).where(t.alert_acks.c.alert_id.in_(ids))).mappings().all()
    return {r["alert_id"]: {"by": r["acked_by"], "comment": r["comment"], "ts": as_utc(r["ts"])} for r in rows}


def ack_alert(engine: Engine, alert_id: str, by: str, comment: str = "", now: datetime | None = None) -> dict[str, Any]:
    """Acknowledge an alert; the first acknowledgement stays (acking again changes nothing).

    Returns the stored acknowledgement; raises :class:`AlertNotFound` for an unknown id and
    ``ValueError`` without ``by``.
    """
    if not by.strip():
        raise ValueError("say who acknowledges the alert (by)")
    with engine.begin() as conn:
        exists = conn.execute(select(t.alerts.c.alert_id).where(t.alerts.c.alert_id == alert_id).limit(1)).first()
        if exists is None:
            raise AlertNotFound(f"no alert with id {alert_id!r}")
        repository.insert_ignoring_duplicates(
            conn,
            t.alert_acks,
            [{"alert_id": alert_id, "acked_by": by.strip(), "comment": comment, "ts": now or utcnow()}],
        )
    return acks_for(engine, [alert_id])[alert_id]
