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
from datetime import datetime, timedelta

from sqlalchemy import Connection, delete, func, select

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
    stamp = utcnow()
    for (w_start, version, name), values in groups.items():
        present = sorted(v for v, _ in values if v is not None)
        weights = sum(w for v, w in values if v is not None)
        out.append(
            {
                "window_start": w_start,
                "window_s": window_s,
                "model_version": version,
                "name": name,
                "count": round(weights),
                "errors": round(sum(w for v, w in values if v is None)),
                "mean": sum(v * w for v, w in values if v is not None) / weights if present else None,
                "p50": percentile(present, 50) if present else None,
                "p95": percentile(present, 95) if present else None,
                "p99": percentile(present, 99) if present else None,
                "updated_at": stamp,
            }
        )
    conn.execute(
        delete(t.metric_windows).where(
            t.metric_windows.c.window_s == window_s,
            t.metric_windows.c.window_start >= start,
            t.metric_windows.c.window_start < end,
        )
    )
    return insert_ignoring_duplicates(conn, t.metric_windows, out)
