"""Tumbling-window aggregates of the metrics, per model version, materialized in ``metric_windows``.

Computed from the ``metrics`` table, so every worker of the group computes the same numbers and
the upserts agree; late rows are picked up because the latest closed windows are recomputed.

Sampled metrics (the scoring budget, ``ATALAIA_SAMPLE_RATES``): each row stands for
``1 / sample_fraction`` events, so ``count`` and ``errors`` (and the request rate and cost per hour
read from them) are weighted sums, estimates of what scoring every event would have counted. The
mean is the weighted (Horvitz-Thompson) mean, equal to the plain mean when the fraction did not
change within the window; percentiles are of the sampled values, unweighted (a uniform sample's
percentiles estimate the population's without weights).
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, delete, func, select, text

from atalaia.events import utcnow
from atalaia.metrics.stats import percentile
from atalaia.storage import tables as t
from atalaia.storage.repository import as_utc, insert_ignoring_duplicates

#: Seconds after a window's end before it is computed (lets stragglers arrive).
GRACE_S = 5.0
#: Closed windows recomputed on every pass, to include rows that arrived late.
RECOMPUTE = 2


def window_start(ts: datetime, window_s: int) -> datetime:
    """Start of the tumbling window holding ``ts``.

    >>> from datetime import UTC
    >>> window_start(datetime(2026, 1, 1, 10, 0, 59, tzinfo=UTC), 60).isoformat()
    '2026-01-01T10:00:00+00:00'
    """
    epoch = ts.timestamp()
    return datetime.fromtimestamp(epoch - epoch % window_s, ts.tzinfo)


def materialize(conn: Connection, window_s: int = 60, now: datetime | None = None, lookback_s: int = 3600) -> int:
    """Compute the closed windows not yet materialized (and the last few again); return rows written."""
    now = now or utcnow()
    latest = conn.execute(
        select(func.max(t.metric_windows.c.window_start)).where(t.metric_windows.c.window_s == window_s)
    ).scalar()
    start = window_start(now - timedelta(seconds=lookback_s), window_s)
    if latest is not None:
        start = max(start, as_utc(latest) - timedelta(seconds=window_s * (RECOMPUTE - 1)))
    end = window_start(now - timedelta(seconds=GRACE_S), window_s)  # exclusive: windows before it are closed
    if end <= start:
        return 0
    stamp = utcnow()
    aggregate = _aggregate_in_postgres if conn.dialect.name == "postgresql" else _aggregate_in_python
    out = [{"window_s": window_s, "updated_at": stamp, **window} for window in aggregate(conn, window_s, start, end)]
    conn.execute(
        delete(t.metric_windows).where(
            t.metric_windows.c.window_s == window_s,
            t.metric_windows.c.window_start >= start,
            t.metric_windows.c.window_start < end,
        )
    )
    return insert_ignoring_duplicates(conn, t.metric_windows, out)


def _aggregate_row(
    w_start: datetime, version: str, name: str, weights: float, error_weights: float, weighted_sum: float | None
) -> dict[str, Any]:
    """The columns of one window that both aggregations share (counts rounded the same way)."""
    return {
        "window_start": w_start,
        "model_version": version,
        "name": name,
        "count": round(weights),
        "errors": round(error_weights),
        "mean": weighted_sum / weights if weights and weighted_sum is not None else None,
    }


def _aggregate_in_python(conn: Connection, window_s: int, start: datetime, end: datetime) -> list[dict[str, Any]]:
    """SQLite: the rows of ``[start, end)`` read and aggregated here (a laptop's volumes)."""
    rows = conn.execute(
        select(
            t.metrics.c.ts, t.metrics.c.model_version, t.metrics.c.name, t.metrics.c.value, t.metrics.c.sample_fraction
        ).where(t.metrics.c.ts >= start, t.metrics.c.ts < end)
    ).all()
    groups: dict[tuple[datetime, str, str], list[tuple[float | None, float]]] = defaultdict(list)
    for row in rows:
        weight = 1.0 / row.sample_fraction if row.sample_fraction else 1.0
        groups[(window_start(as_utc(row.ts), window_s), row.model_version, row.name)].append((row.value, weight))
    out = []
    for (w_start, version, name), values in groups.items():
        present = sorted(v for v, _ in values if v is not None)
        weights = sum(w for v, w in values if v is not None)
        window = _aggregate_row(
            w_start,
            version,
            name,
            weights,
            sum(w for v, w in values if v is None),
            sum(v * w for v, w in values if v is not None),
        )
        for q in (50, 95, 99):
            window[f"p{q}"] = percentile(present, q) if present else None
        out.append(window)
    return out


#: The same aggregates computed by PostgreSQL: only one row per window comes back. Reading every
#: metric row into Python instead (200 events/s x 20 metrics x 2 windows = 480,000 rows per pass,
#: every 10 s) held the worker's GIL for seconds and stalled its scoring thread.
#: ``percentile_cont`` interpolates linearly, as :func:`atalaia.metrics.stats.percentile` does.
_WINDOWS_SQL = text(
    """
    SELECT floor(extract(epoch FROM ts) / :window_s) * :window_s AS epoch,
           model_version, name,
           coalesce(sum(1.0 / coalesce(nullif(sample_fraction, 0), 1)) FILTER (WHERE value IS NOT NULL), 0)
               AS weights,
           coalesce(sum(1.0 / coalesce(nullif(sample_fraction, 0), 1)) FILTER (WHERE value IS NULL), 0)
               AS error_weights,
           sum(value / coalesce(nullif(sample_fraction, 0), 1)) AS weighted_sum,
           percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY value) AS pcts
    FROM metrics
    WHERE ts >= :start AND ts < :end
    GROUP BY 1, 2, 3
    """
)


def _aggregate_in_postgres(conn: Connection, window_s: int, start: datetime, end: datetime) -> list[dict[str, Any]]:
    """PostgreSQL: the windows of ``[start, end)`` aggregated by the server (index on ``ts``)."""
    out = []
    for row in conn.execute(_WINDOWS_SQL, {"window_s": window_s, "start": start, "end": end}):
        w_start = datetime.fromtimestamp(float(row.epoch), UTC)
        window = _aggregate_row(
            w_start, row.model_version, row.name, float(row.weights), float(row.error_weights), row.weighted_sum
        )
        pcts = row.pcts or [None, None, None]
        window.update(p50=pcts[0], p95=pcts[1], p99=pcts[2])
        out.append(window)
    return out
