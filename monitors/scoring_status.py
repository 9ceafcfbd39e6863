"""The dashboard's scoring panel: lag, budget and the sampling fraction of each metric group.

Read from the tables, so it shows what every worker of the group did: the delay from an event's
time to its stored row (the workers' lag as the user sees it), and per expensive group the rows
stored in the range, the mean and lowest ``sample_fraction`` they were taken at, and how many
events they stand for (the sum of ``1 / sample_fraction``). Each worker's live controller state
(cost per event, incoming rate) is on its own Prometheus ``/metrics``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, select

from atalaia.metrics.groups.registry import GROUPS
from atalaia.metrics.stats import percentile
from atalaia.storage import tables as t
from atalaia.storage.repository import as_utc

#: Newest events whose delay is summarised (a bounded read whatever the range).
LAG_SAMPLE = 1000


def scoring_status(conn: Connection, start: datetime, end: datetime, budget: float) -> dict[str, Any]:
    """Lag percentiles, the configured budget, and per-group sampling in ``[start, end)``."""
    ev = t.inference_events
    rows = conn.execute(
        select(ev.c.ts, ev.c.ingested_at)
        .where(ev.c.ts >= start, ev.c.ts < end)
        .order_by(ev.c.ts.desc())
        .limit(LAG_SAMPLE)
    ).all()
    delays = sorted(max(0.0, (as_utc(r.ingested_at) - as_utc(r.ts)).total_seconds()) for r in rows)
    m = t.metrics
    per_name = {
        r.name: r
        for r in conn.execute(
            select(
                m.c.name,
                func.count().label("rows"),
                func.avg(m.c.sample_fraction).label("mean"),
                func.min(m.c.sample_fraction).label("low"),
                func.sum(1.0 / m.c.sample_fraction).label("events"),
            )
            .where(m.c.ts >= start, m.c.ts < end)
            .group_by(m.c.name)
        )
    }
    groups = []
    for group in GROUPS:
        if group.cost != "expensive":
            continue
        # A group's rows: those of its first metric that has any (one row per scored event).
        found = next((per_name[x.name] for x in group.metrics if x.name in per_name), None)
        groups.append(
            {
                "group": group.name,
                "rows": int(found.rows) if found else 0,
                "mean_fraction": float(found.mean) if found else None,
                "min_fraction": float(found.low) if found else None,
                "events_estimated": round(float(found.events)) if found else 0,
            }
        )
    return {
        "budget_cores": budget,
        "lag_s": {
            "events": len(delays),
            "p50": percentile(delays, 50) if delays else None,
            "p95": percentile(delays, 95) if delays else None,
        },
        "groups": groups,
    }
