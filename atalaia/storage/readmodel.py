"""The read model: what the dashboard, the report and the demo's live view read from the tables.

One set of queries and bucket rules over ``metric_windows`` (materialized by the workers),
``metrics`` (drift tests), ``alerts`` (with ``alert_acks``), ``model_versions`` and
``retrain_runs``, so the three views agree on what "the latest state of an alert" or "a bucket"
means. Queries are plain SQLAlchemy Core, so the same code runs on SQLite and PostgreSQL. The
views themselves (HTTP routes, HTML, the terminal) live with their services.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import BigInteger, Connection, Engine, Integer, Select, and_, cast, extract, func, select

from atalaia.durations import parse_time
from atalaia.metrics.groups import registry
from atalaia.metrics.groups.base import Chart
from atalaia.storage import tables as t
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
#: The report's most points per series; its bucket width grows with the range to stay under it.
REPORT_MAX_BUCKETS = 120
#: Requests per bucket wanted on average (percentiles and rates of fewer are noise).
MIN_EVENTS_PER_BUCKET = 5
#: The report's bucket widths, in seconds.
BUCKET_STEPS = (5, 10, 15, 20, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)


#: The dashboard's charts: every metric group's (``atalaia/metrics/groups/``), from the registry.
CHARTS: tuple[Chart, ...] = registry.charts()
CHARTS_BY_KEY = {c.key: c for c in CHARTS}
WINDOW_STATS = ("mean", "p50", "p95", "p99")
DERIVED_STATS = ("rate", "per_hour")


def parse_since(value: str | None, now: datetime, default: timedelta = timedelta(hours=1)) -> datetime:
    """Start of the range: a look-back (``90s``, ``30m``, ``6h``, ``2d``, bare seconds) or a timestamp.

    The range is capped at :data:`MAX_RANGE`. A timestamp without an offset is UTC.

    >>> from datetime import UTC
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
    else:
        try:
            start = parse_time(value, now)
        except ValueError:
            raise ValueError(f"since must be a duration like 30m, 6h, 2d or an ISO 8601 time, got {value!r}") from None
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


def bucket_seconds(
    span_s: float,
    minimum: int = 1,
    max_buckets: int = MAX_POINTS,
    steps: Sequence[int] | None = None,
    events: int | None = None,
) -> int:
    """The bucket width for a range of ``span_s`` seconds: at least ``minimum`` seconds, at most
    ``max_buckets`` buckets.

    Without ``steps`` the width is a whole number of ``minimum`` (the dashboard: whole windows);
    with ``steps`` it is the smallest of them that fits, or the last (the report: round widths).
    With ``events`` (requests in the range), buckets also hold :data:`MIN_EVENTS_PER_BUCKET`
    requests on average, so a sparse stream is not drawn as a saw-tooth of 1s and 2s.

    >>> bucket_seconds(3600, 60), bucket_seconds(7 * 86400, 60)
    (60, 840)
    >>> def report(span, minimum=5, events=None):
    ...     return bucket_seconds(span, minimum, 120, BUCKET_STEPS, events)
    >>> report(600), report(3600), report(86400), report(600, 60)
    (5, 30, 900, 60)
    >>> report(1800, events=180), report(180, events=360)
    (60, 5)
    """
    if events:
        minimum = max(minimum, math.ceil(span_s * MIN_EVENTS_PER_BUCKET / events))
    if steps is None:
        return minimum * max(1, math.ceil(span_s / minimum / max_buckets))
    for step in steps:
        if step >= minimum and span_s / step <= max_buckets:
            return step
    return steps[-1]


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
    bucket_s = bucket_seconds((until - since).total_seconds(), window_s, max_points)
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


# -- the demo's live view ---------------------------------------------------------------------------
def recent_levels(conn: Connection, names: Iterable[str], since: datetime, last: int = 20) -> dict[str, float | None]:
    """The mean of each metric's ``last`` values since ``since`` (``None`` where there are none)."""
    m = t.metrics
    levels: dict[str, float | None] = {}
    for name in names:
        values = [
            r[0]
            for r in conn.execute(
                select(m.c.value)
                .where(m.c.name == name, m.c.ts >= since, m.c.value.is_not(None))
                .order_by(m.c.ts.desc())
                .limit(last)
            )
        ]
        levels[name] = sum(values) / len(values) if values else None
    return levels


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


def latest_run(engine: Engine, since: datetime) -> dict[str, Any] | None:
    """The newest retrain run started since ``since`` (``status``, ``steps``, ...), or ``None``."""
    r = t.retrain_runs
    with engine.connect() as conn:
        row = conn.execute(select(r).where(r.c.started_at >= since).order_by(r.c.started_at.desc())).mappings().first()
    return dict(row) if row else None
