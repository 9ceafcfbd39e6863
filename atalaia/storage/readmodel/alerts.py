"""Alerts in the read model: the latest transition of each alert (one query for every view), open
alerts and transitions (dashboard), alert lifecycles (report), current states (the demo)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Select, and_, func, select

from atalaia.storage import tables as t
from atalaia.storage.readmodel.ranges import epoch_ms
from atalaia.storage.repository import as_utc

#: Most alert transitions sent per dashboard request.
MAX_TRANSITIONS = 500
#: Most alert transitions the report reads.
MAX_ALERT_ROWS = 5000
OPEN_STATES = ("pending", "firing")


@dataclass
class Transition:
    """One stored alert transition."""

    ts: datetime
    state: str


@dataclass
class Alert:
    """The lifecycle of one alert in the range."""

    alert_id: str
    rule: str
    severity: str
    labels: dict[str, Any]
    summary: str
    threshold: float | None
    action: str | None
    transitions: list[Transition]

    @property
    def started(self) -> datetime:
        """When it went pending (or firing, when no pending row is in range)."""
        return self.transitions[0].ts

    @property
    def fired(self) -> datetime | None:
        """First ``firing`` transition."""
        return next((x.ts for x in self.transitions if x.state == "firing"), None)

    @property
    def resolved(self) -> datetime | None:
        """``resolved`` transition, when it is the last one."""
        last = self.transitions[-1]
        return last.ts if last.state == "resolved" else None

    @property
    def state(self) -> str:
        """Latest state."""
        return self.transitions[-1].state


def latest_transitions(key: str = "alert_id", since: datetime | None = None) -> Any:
    """Subquery of each alert's latest transition time (columns ``key`` and ``ts``).

    ``key`` is ``alert_id`` (one episode of an alert) or ``fingerprint`` (the rule and labels,
    across episodes); with ``since``, only transitions from then on count. Join it on both
    columns to get the latest row of each alert; see :func:`latest_alert_rows`.
    """
    a = t.alerts
    query = select(a.c[key], func.max(a.c.ts).label("ts"))
    if since is not None:
        query = query.where(a.c.ts >= since)
    return query.group_by(a.c[key]).subquery()


def latest_alert_rows(query: Select[Any], key: str = "alert_id", since: datetime | None = None) -> Select[Any]:
    """``query`` (a select over ``alerts``) narrowed to the latest transition of each alert."""
    a = t.alerts
    latest = latest_transitions(key, since)
    return query.join(latest, and_(latest.c[key] == a.c[key], latest.c.ts == a.c.ts))


def _alert_json(row: Any, metric_of_rule: dict[str, str]) -> dict[str, Any]:
    labels = dict(row.labels or {})
    return {
        "event_id": row.event_id,
        "alert_id": row.alert_id,
        "rule": row.rule,
        "metric": metric_of_rule.get(row.rule) or labels.get("metric"),
        "state": row.state,
        "severity": row.severity,
        "labels": labels,
        "annotations": dict(row.annotations or {}),
        "value": row.value,
        "threshold": row.threshold,
        "action": row.action,
        "started_at": as_utc(row.started_at).isoformat(),
        "ts": epoch_ms(row.ts),
        "time": as_utc(row.ts).isoformat(),
    }


def open_alerts(conn: Connection, metric_of_rule: dict[str, str]) -> list[dict[str, Any]]:
    """Alerts whose latest transition is pending or firing, firing first, with their acknowledgement."""
    a = t.alerts
    query = (
        latest_alert_rows(select(a, t.alert_acks.c.acked_by, t.alert_acks.c.ts.label("acked_at")))
        .outerjoin(t.alert_acks, t.alert_acks.c.alert_id == a.c.alert_id)
        .where(a.c.state.in_(OPEN_STATES))
        .order_by(a.c.ts.desc())
    )
    out = []
    seen: set[str] = set()
    for row in conn.execute(query):
        if row.alert_id in seen:  # two transitions with the same time: keep one
            continue
        seen.add(row.alert_id)
        item = _alert_json(row, metric_of_rule)
        item["acked_by"] = row.acked_by
        item["acked_at"] = as_utc(row.acked_at).isoformat() if row.acked_at is not None else None
        out.append(item)
    severity_rank = {"critical": 0, "warning": 1, "info": 2}
    out.sort(key=lambda x: (x["state"] != "firing", severity_rank.get(x["severity"], 3), -x["ts"]))
    return out


def alert_transitions(
    conn: Connection, since: datetime, until: datetime, metric_of_rule: dict[str, str]
) -> list[dict[str, Any]]:
    """Alert transitions in the range, oldest first (the newest :data:`MAX_TRANSITIONS`)."""
    a = t.alerts
    query = select(a).where(a.c.ts >= since, a.c.ts <= until).order_by(a.c.ts.desc()).limit(MAX_TRANSITIONS)
    return [_alert_json(row, metric_of_rule) for row in reversed(conn.execute(query).all())]


def alert_states_since(conn: Connection, since: datetime) -> list[tuple[str, str, str]]:
    """``(rule, state, model_version)`` of each alert (by fingerprint) at its latest transition since ``since``."""
    a = t.alerts
    rows = conn.execute(latest_alert_rows(select(a.c.rule, a.c.state, a.c.labels), "fingerprint", since)).all()
    return [(r.rule, r.state, (r.labels or {}).get("model_version", "")) for r in rows]


def fired_since(conn: Connection, since: datetime) -> int:
    """How many times an alert went ``firing`` since ``since``."""
    a = t.alerts
    return int(
        conn.execute(select(func.count()).select_from(a).where(a.c.ts >= since, a.c.state == "firing")).scalar_one()
    )


def alert_episodes(conn: Connection, start: datetime, end: datetime, limit: int = MAX_ALERT_ROWS) -> list[Alert]:
    """The lifecycle of every alert with a transition in the range, oldest first."""
    # Alerts with a transition in range, plus the earlier transitions of those alerts (an alert
    # that went firing before `start` and resolved inside the range still shows where it began).
    ids = select(t.alerts.c.alert_id).where(t.alerts.c.ts >= start, t.alerts.c.ts <= end).distinct()
    rows = conn.execute(
        select(t.alerts)
        .where(t.alerts.c.alert_id.in_(ids), t.alerts.c.ts <= end)
        .order_by(t.alerts.c.ts, t.alerts.c.event_id)
        .limit(limit)
    ).mappings()
    alerts: dict[str, Alert] = {}
    for row in rows:
        alert = alerts.get(row["alert_id"])
        if alert is None:
            annotations = row["annotations"] or {}
            alert = alerts[row["alert_id"]] = Alert(
                alert_id=str(row["alert_id"]),
                rule=row["rule"],
                severity=row["severity"],
                labels=dict(row["labels"] or {}),
                summary=str(annotations.get("summary", "")),
                threshold=row["threshold"],
                action=row["action"],
                transitions=[],
            )
        alert.transitions.append(Transition(as_utc(row["ts"]), row["state"]))
    return sorted(alerts.values(), key=lambda a: a.started)
