"""Metric series of the read model: window aggregates and drift tests (dashboard), bucketed
metric rows or windows and drift tests (report), recent levels (the demo's live view)."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import BigInteger, Connection, Integer, cast, extract, func, select

from atalaia.metrics.groups import registry
from atalaia.metrics.groups.base import Chart
from atalaia.metrics.stats import percentile
from atalaia.storage import tables as t
from atalaia.storage.readmodel.ranges import (
    DEFAULT_WINDOW_S,
    MAX_POINTS,
    bucket_seconds,
    bucket_start,
    downsample,
    epoch_ms,
)
from atalaia.storage.repository import as_utc

#: Most drift rows read per dashboard request (a test every few dozen events: plenty for a month).
MAX_DRIFT_ROWS = 20_000
#: Most drift tests the report draws per model version; more are reduced to the maximum per bucket.
MAX_DRIFT_POINTS = 600
DRIFT_METRIC = "embedding_drift"
#: The dashboard's charts: every metric group's (``atalaia/metrics/groups/``), from the registry.
CHARTS: tuple[Chart, ...] = registry.charts()
CHARTS_BY_KEY = {c.key: c for c in CHARTS}
WINDOW_STATS = ("mean", "p50", "p95", "p99")
DERIVED_STATS = ("rate", "per_hour")


@dataclass
class Series:
    """One statistic of one metric for one model version: ``(bucket start, value)`` points."""

    metric: str
    stat: str
    version: str
    points: list[tuple[datetime, float | None]]


@dataclass
class DriftTest:
    """One drift test (a row ``embedding_drift`` and its threshold)."""

    ts: datetime
    version: str
    score: float
    threshold: float | None


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


def raw_series(
    conn: Connection, names: Sequence[str], start: datetime, end: datetime, width: int
) -> tuple[list[Series], dict[str, Any]]:
    """Count, sum, mean and p95 of each metric in ``names`` per version and bucket, from the ``metrics`` rows.

    Also returns ``{"raw": {(name, version): values}}`` for whole-range totals.
    """
    rows = conn.execute(
        select(t.metrics.c.ts, t.metrics.c.model_version, t.metrics.c.name, t.metrics.c.value).where(
            t.metrics.c.name.in_(names), t.metrics.c.ts >= start, t.metrics.c.ts <= end
        )
    )
    groups: dict[tuple[str, str, datetime], list[float]] = defaultdict(list)
    counts: dict[tuple[str, str, datetime], int] = defaultdict(int)
    totals: dict[tuple[str, str], list[float]] = defaultdict(list)
    for row in rows:
        name, version, value = str(row.name), str(row.model_version), row.value
        key = (name, version, bucket_start(as_utc(row.ts), start, width))
        counts[key] += 1
        if value is not None and math.isfinite(value):
            groups[key].append(float(value))
            totals[(name, version)].append(float(value))
    return _to_series(groups, counts, start, end, width), {"raw": totals}


def windowed_series(
    conn: Connection, names: Sequence[str], start: datetime, end: datetime, width: int, window_s: int = DEFAULT_WINDOW_S
) -> tuple[list[Series], dict[str, Any]]:
    """The same statistics as :func:`raw_series` re-aggregated from ``metric_windows`` (long ranges).

    Also returns ``{"windows": {(name, version): (count, sum, max p95)}}`` for whole-range totals.
    """
    rows = conn.execute(
        select(t.metric_windows).where(
            t.metric_windows.c.window_s == window_s,
            t.metric_windows.c.name.in_(names),
            t.metric_windows.c.window_start >= start - timedelta(seconds=window_s),
            t.metric_windows.c.window_start <= end,
        )
    ).mappings()
    # Each window stands for `count` values at its mean (and its p95); buckets re-aggregate them.
    groups: dict[tuple[str, str, datetime], list[tuple[int, float | None, float | None]]] = defaultdict(list)
    for row in rows:
        ts = max(as_utc(row["window_start"]), start)
        key = (row["name"], row["model_version"], bucket_start(ts, start, width))
        groups[key].append((int(row["count"]), row["mean"], row["p95"]))
    out: dict[tuple[str, str, str], dict[datetime, float | None]] = defaultdict(dict)
    totals: dict[tuple[str, str], tuple[int, float, float]] = {}
    for (name, version, bucket), items in groups.items():
        n = sum(c for c, mean, _ in items if mean is not None)
        total = sum(c * mean for c, mean, _ in items if mean is not None)
        p95 = [(c, p) for c, _, p in items if p is not None]
        out[(name, version, "count")][bucket] = float(sum(c for c, _, _ in items))
        out[(name, version, "sum")][bucket] = total
        out[(name, version, "mean")][bucket] = total / n if n else None
        # A p95 over windows is approximated by the count-weighted mean of the windows' p95s.
        out[(name, version, "p95")][bucket] = sum(c * p for c, p in p95) / sum(c for c, _ in p95) if p95 else None
        prev = totals.get((name, version), (0, 0.0, -math.inf))
        totals[(name, version)] = (
            prev[0] + n,
            prev[1] + total,
            max([prev[2], *(p for _, p in p95)]),
        )
    series = _fill(out, start, end, width)
    return series, {"windows": totals}


def _to_series(
    groups: Mapping[tuple[str, str, datetime], list[float]],
    counts: Mapping[tuple[str, str, datetime], int],
    start: datetime,
    end: datetime,
    width: int,
) -> list[Series]:
    out: dict[tuple[str, str, str], dict[datetime, float | None]] = defaultdict(dict)
    for (name, version, bucket), n in counts.items():
        values = groups.get((name, version, bucket), [])
        out[(name, version, "count")][bucket] = float(n)
        out[(name, version, "sum")][bucket] = float(sum(values))
        out[(name, version, "mean")][bucket] = sum(values) / len(values) if values else None
        out[(name, version, "p95")][bucket] = percentile(values, 95) if values else None
    return _fill(out, start, end, width)


def _fill(
    found: Mapping[tuple[str, str, str], dict[datetime, float | None]], start: datetime, end: datetime, width: int
) -> list[Series]:
    """Series over every bucket from a version's first to its last point (``None`` where it had none).

    A gap inside a version's life breaks its line; buckets outside it are left out, so a version
    replaced by a deploy does not draw a line to the end of the chart.
    """
    series = []
    for (name, version, stat), points in sorted(found.items()):
        if not points:
            continue
        first, last = min(points), max(points)
        buckets = []
        ts = first
        while ts <= last:
            buckets.append((ts, points.get(ts)))
            ts += timedelta(seconds=width)
        # Centre each point in its bucket so it lines up with the events it summarizes.
        half = timedelta(seconds=width / 2)
        series.append(Series(name, stat, version, [(min(b + half, end), v) for b, v in buckets]))
    return series


def drift_tests(
    conn: Connection, start: datetime, end: datetime, width: int, max_points: int = MAX_DRIFT_POINTS
) -> list[DriftTest]:
    """Each drift test (score and calibrated threshold) in the range; above ``max_points`` per version,
    the highest score of each ``width``-second bucket."""
    rows = conn.execute(
        select(t.metrics.c.ts, t.metrics.c.model_version, t.metrics.c.value, t.metrics.c.labels)
        .where(t.metrics.c.name == DRIFT_METRIC, t.metrics.c.ts >= start, t.metrics.c.ts <= end)
        .order_by(t.metrics.c.ts)
    ).all()
    tests: dict[str, list[DriftTest]] = defaultdict(list)
    for row in rows:
        if row.value is None:
            continue
        labels = row.labels if isinstance(row.labels, dict) else {}
        threshold: float | None
        try:
            threshold = float(labels["threshold"])
        except (KeyError, TypeError, ValueError):
            threshold = None
        version = str(row.model_version)
        tests[version].append(DriftTest(as_utc(row.ts), version, float(row.value), threshold))
    out: list[DriftTest] = []
    for version_tests in tests.values():
        if len(version_tests) > max_points:  # keep the highest score of each bucket
            best: dict[datetime, DriftTest] = {}
            for test in version_tests:
                key = bucket_start(test.ts, start, width)
                if key not in best or test.score > best[key].score:
                    best[key] = test
            version_tests = sorted(best.values(), key=lambda x: x.ts)
        out.extend(version_tests)
    return sorted(out, key=lambda x: (x.ts, x.version))


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
