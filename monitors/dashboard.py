"""The dashboard's data: chart series, deploys and alerts read from the tables, and their JSON routes.

Aggregates come from ``metric_windows`` (materialized by the workers), the drift score and its
calibrated threshold from the ``metrics`` rows the drift tests write, alerts from ``alerts``
(with ``alert_acks``), and deploys from ``model_versions.activated_at`` plus the ``deploy`` and
``rollback`` events of the models topic when a :class:`monitors.model_feed.ModelEventFeed` is
attached to the app. Queries are plain SQLAlchemy Core, so the same code runs on SQLite and
PostgreSQL.
"""

from __future__ import annotations

import logging
import math
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request
from sqlalchemy import BigInteger, Connection, Engine, Integer, and_, cast, extract, func, select

from atalaia.events import utcnow
from atalaia.metrics.groups import registry
from atalaia.metrics.groups.base import Chart
from atalaia.storage import tables as t
from atalaia.storage.canaries import canary_summaries
from atalaia.storage.repository import as_utc

log = logging.getLogger(__name__)

#: Window length the workers materialize (``consumers.worker.WINDOW_S``).
DEFAULT_WINDOW_S = 60
#: Most points per series sent to the browser; longer ranges are averaged into coarser buckets.
MAX_POINTS = 720
#: Longest range a request may ask for.
MAX_RANGE = timedelta(days=31)
#: Most drift rows read per request (a test every few dozen events: plenty for a month).
MAX_DRIFT_ROWS = 20_000
#: Most alert transitions sent per request.
MAX_TRANSITIONS = 500
OPEN_STATES = ("pending", "firing")


#: The dashboard's charts: every metric group's (``atalaia/metrics/groups/``), from the registry.
CHARTS: tuple[Chart, ...] = registry.charts()
CHARTS_BY_KEY = {c.key: c for c in CHARTS}
WINDOW_STATS = ("mean", "p50", "p95", "p99")
DERIVED_STATS = ("rate", "per_hour")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(value: str | None, now: datetime, default: timedelta = timedelta(hours=1)) -> datetime:
    """Start of the range: a look-back (``90s``, ``30m``, ``6h``, ``2d``, bare seconds) or a timestamp.

    The range is capped at :data:`MAX_RANGE`. A timestamp without an offset is UTC.

    >>> now = datetime(2026, 1, 2, 12, 0, tzinfo=UTC)
    >>> parse_since("30m", now).isoformat()
    '2026-01-02T11:30:00+00:00'
    >>> parse_since("3600", now).isoformat()
    '2026-01-02T11:00:00+00:00'
    >>> parse_since("2026-01-02T10:15:00", now).isoformat()
    '2026-01-02T10:15:00+00:00'
    >>> parse_since(None, now).isoformat()
    '2026-01-02T11:00:00+00:00'
    >>> parse_since("soon", now)
    Traceback (most recent call last):
    ...
    ValueError: since must be a duration like 30m, 6h, 2d or an ISO 8601 time, got 'soon'
    """
    if value is None or not value.strip():
        start = now - default
    elif match := _DURATION.match(value):
        start = now - timedelta(seconds=float(match.group(1)) * _UNIT_S[match.group(2)])
    else:
        try:
            start = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"since must be a duration like 30m, 6h, 2d or an ISO 8601 time, got {value!r}") from None
        start = as_utc(start).astimezone(UTC)
    return max(start, now - MAX_RANGE)


def epoch_ms(ts: datetime) -> int:
    """Milliseconds since the epoch of a stored time (naive SQLite times are UTC).

    >>> epoch_ms(datetime(1970, 1, 1, 0, 0, 1))
    1000
    """
    return int(as_utc(ts).timestamp() * 1000)


def downsample(points: Sequence[tuple[int, float]], max_points: int) -> list[tuple[int, float]]:
    """Average time-sorted points into at most ``max_points`` equal time buckets.

    >>> downsample([(0, 1.0), (1, 3.0), (2, 5.0), (3, 7.0)], 2)
    [(0, 2.0), (2, 6.0)]
    >>> downsample([(0, 1.0)], 10)
    [(0, 1.0)]
    """
    if len(points) <= max_points or max_points < 1:
        return list(points)
    first, last = points[0][0], points[-1][0]
    width = (last - first) / max_points or 1
    buckets: dict[int, list[tuple[int, float]]] = defaultdict(list)
    for ts, value in points:
        buckets[min(int((ts - first) / width), max_points - 1)].append((ts, value))
    out = []
    for _, members in sorted(buckets.items()):
        out.append((members[0][0], sum(v for _, v in members) / len(members)))
    return out


def _epoch_s(column: Any, dialect: str) -> Any:
    """SQL for a stored time's whole seconds since the epoch (SQLite keeps UTC text)."""
    if dialect == "postgresql":
        return cast(extract("epoch", column), BigInteger)
    return cast(func.strftime("%s", column), Integer)


def _stat_sql(stat: str) -> Any:
    """SQL aggregate of one statistic over the windows of a bucket (``rate``/``per_hour`` before scaling)."""
    mw = t.metric_windows
    if stat == "rate":
        # Requests per window: every scored request has a latency row, errors included.
        return func.avg(mw.c.count + mw.c.errors)
    if stat == "per_hour":
        return func.avg(mw.c.mean * mw.c.count)  # the window's sum of values
    if stat in WINDOW_STATS:
        return func.avg(getattr(mw.c, stat))
    raise ValueError(f"unknown statistic {stat!r}; use one of {WINDOW_STATS + DERIVED_STATS}")


def bucket_seconds(since: datetime, until: datetime, window_s: int, max_points: int = MAX_POINTS) -> int:
    """Bucket length for a range: whole windows, at most ``max_points`` buckets.

    >>> from datetime import UTC
    >>> t0 = datetime(2026, 1, 1, tzinfo=UTC)
    >>> bucket_seconds(t0, t0 + timedelta(hours=1), 60), bucket_seconds(t0, t0 + timedelta(days=7), 60)
    (60, 840)
    """
    windows = (until - since).total_seconds() / window_s
    return window_s * max(1, math.ceil(windows / max_points))


def window_series(
    conn: Connection,
    metric: str,
    stats: Iterable[str],
    since: datetime,
    until: datetime,
    model_version: str | None = None,
    window_s: int = DEFAULT_WINDOW_S,
    max_points: int = MAX_POINTS,
) -> list[dict[str, Any]]:
    """Series of ``metric``'s window statistics per model version, one point per bucket's middle.

    Up to :data:`MAX_POINTS` windows a bucket is one window; longer ranges average consecutive
    windows in the database, so a week of 1-minute windows costs no more than an hour.
    """
    mw = t.metric_windows
    stats = list(stats)
    bucket_s = bucket_seconds(since, until, window_s, max_points)
    bucket = (_epoch_s(mw.c.window_start, conn.dialect.name) // bucket_s).label("bucket")
    query = (
        select(bucket, mw.c.model_version, *[_stat_sql(stat).label(stat) for stat in stats])
        .where(
            mw.c.name == metric,
            mw.c.window_s == window_s,
            mw.c.window_start >= since - timedelta(seconds=window_s),
            mw.c.window_start <= until,
        )
        .group_by(bucket, mw.c.model_version)
        .order_by(mw.c.model_version, bucket)
    )
    if model_version:
        query = query.where(mw.c.model_version == model_version)
    scale = {"rate": 1.0 / window_s, "per_hour": 3600.0 / window_s}
    points: dict[tuple[str, str], list[tuple[int, float]]] = defaultdict(list)
    for row in conn.execute(query).mappings():
        at = int(row["bucket"]) * bucket_s * 1000 + bucket_s * 500
        for stat in stats:
            value = row[stat]
            if value is not None:
                points[(row["model_version"], stat)].append((at, float(value) * scale.get(stat, 1.0)))
    return [
        {"model_version": version, "metric": metric, "stat": stat, "role": "value", "points": pts}
        for (version, stat), pts in sorted(points.items())
    ]


def drift_series(
    conn: Connection,
    since: datetime,
    until: datetime,
    model_version: str | None = None,
    max_points: int = MAX_POINTS,
) -> list[dict[str, Any]]:
    """Drift test scores and their calibrated threshold per model version, from ``metrics``.

    Each test writes ``embedding_drift`` (the MMD² score) and ``embedding_drift_threshold`` with
    the same time, so the threshold series is the line the score must cross to raise drift.
    """
    m = t.metrics
    names = {"embedding_drift": "score", "embedding_drift_threshold": "threshold"}
    query = (
        select(m.c.ts, m.c.model_version, m.c.name, m.c.value)
        .where(m.c.name.in_(list(names)), m.c.ts >= since, m.c.ts <= until, m.c.value.is_not(None))
        .order_by(m.c.ts.desc())
        .limit(MAX_DRIFT_ROWS)
    )
    if model_version:
        query = query.where(m.c.model_version == model_version)
    points: dict[tuple[str, str], list[tuple[int, float]]] = defaultdict(list)
    for row in reversed(conn.execute(query).all()):
        points[(row.model_version, names[row.name])].append((epoch_ms(row.ts), float(row.value)))
    return [
        {
            "model_version": version,
            "metric": "embedding_drift" if stat == "score" else "embedding_drift_threshold",
            "stat": stat,
            "role": "threshold" if stat == "threshold" else "value",
            "points": downsample(pts, max_points),
        }
        for (version, stat), pts in sorted(points.items())
    ]


def chart_series(
    conn: Connection,
    name: str,
    since: datetime,
    until: datetime,
    model_version: str | None = None,
    window_s: int = DEFAULT_WINDOW_S,
) -> dict[str, Any]:
    """The data of a chart by key, or of any metric name in ``metric_windows`` (its mean and p95)."""
    chart = CHARTS_BY_KEY.get(name) or Chart(name, name, "", name, ("mean", "p95"))
    if chart.source == "drift":
        series = drift_series(conn, since, until, model_version)
    else:
        series = window_series(conn, chart.metric, chart.stats, since, until, model_version, window_s)
    return {
        **chart.describe(),
        "since": since.isoformat(),
        "until": until.isoformat(),
        "window_s": window_s,
        "series": series,
    }


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
    latest = select(a.c.alert_id, func.max(a.c.ts).label("last_ts")).group_by(a.c.alert_id).subquery()
    query = (
        select(a, t.alert_acks.c.acked_by, t.alert_acks.c.ts.label("acked_at"))
        .join(latest, and_(a.c.alert_id == latest.c.alert_id, a.c.ts == latest.c.last_ts))
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


def metric_of_rules(load: Callable[[], Sequence[Any]]) -> dict[str, str]:
    """Map rule name → metric from the monitor's rules, or nothing when they cannot be loaded.

    The dashboard uses it to mark an alert on the chart of its metric; a broken rule file
    stops the evaluator, not the page.
    """
    try:
        return {rule.name: rule.metric for rule in load()}
    except Exception as exc:  # noqa: BLE001 - the page works without the mapping
        log.warning("dashboard: rules not loaded; alerts shown without their metric", extra={"error": str(exc)})
        return {}


# -- routes ----------------------------------------------------------------------------------------
router = APIRouter(prefix="/api/dashboard", tags=["dashboard"])


def _engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


def _range(since: str | None, until: str | None) -> tuple[datetime, datetime]:
    now = utcnow()
    try:
        end = parse_since(until, now, timedelta(0)) if until else now
        start = parse_since(since, end)
    except ValueError as exc:
        raise HTTPException(status_code=400, detail=str(exc)) from None
    if start >= end:
        raise HTTPException(status_code=400, detail="since must be before until")
    return start, end


SINCE = Query(None, description="Start: a look-back such as 15m, 1h, 6h, 2d, or an ISO 8601 time (default 1h).")
UNTIL = Query(None, description="End: an ISO 8601 time or a look-back from now (default now).")


@router.get("/charts")
def get_charts() -> dict[str, Any]:
    """The charts the page draws, in order."""
    return {"charts": [c.describe() for c in CHARTS], "window_s": DEFAULT_WINDOW_S}


@router.get("/series")
def get_series(
    request: Request,
    name: str = Query(..., min_length=1, max_length=64, description="A chart key or a metric name."),
    since: str | None = SINCE,
    until: str | None = UNTIL,
    model_version: str | None = Query(None, description="Only this model version."),
    window_s: int = Query(DEFAULT_WINDOW_S, ge=1, le=86_400, description="Window length of the aggregates."),
) -> dict[str, Any]:
    """One chart's series per model version (aggregates of ``metric_windows``, or drift tests)."""
    start, end = _range(since, until)
    with _engine(request).connect() as conn:
        return chart_series(conn, name, start, end, model_version or None, window_s)


@router.get("/deploys")
def get_deploys(request: Request, since: str | None = SINCE, until: str | None = UNTIL) -> dict[str, Any]:
    """Model deploys and rollbacks in the range (vertical lines on the charts)."""
    start, end = _range(since, until)
    feed = getattr(request.app.state, "model_events", None)
    events = feed.events() if feed is not None else []
    with _engine(request).connect() as conn:
        return {"deploys": deploys(conn, start, end, events), "model_events_followed": feed is not None}


@router.get("/alerts")
def get_alerts(request: Request, since: str | None = SINCE, until: str | None = UNTIL) -> dict[str, Any]:
    """Open alerts (latest transition pending or firing) and the transitions in the range (chart markers)."""
    start, end = _range(since, until)
    rules: dict[str, str] = getattr(request.app.state, "metric_of_rule", {})
    with _engine(request).connect() as conn:
        return {
            "open": open_alerts(conn, rules),
            "transitions": alert_transitions(conn, start, end, rules),
        }


@router.get("/canaries")
def get_canaries(request: Request, since: str | None = SINCE, until: str | None = UNTIL) -> dict[str, Any]:
    """Traffic-split canaries started in the range: share, mode, requests per version, verdict."""
    start, _ = _range(since, until)
    with _engine(request).connect() as conn:
        return {"canaries": canary_summaries(conn, start)}


@router.get("/versions")
def get_versions(request: Request, since: str | None = SINCE, until: str | None = UNTIL) -> dict[str, Any]:
    """Model versions with data in the range, and those in the registry (the page's version filter)."""
    start, end = _range(since, until)
    with _engine(request).connect() as conn:
        return {"model_versions": model_versions_seen(conn, start, end)}
