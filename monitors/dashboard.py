"""The dashboard's JSON routes: chart series, deploys and alerts over a time range.

The queries are the kernel's read model (:mod:`atalaia.storage.readmodel`, shared with the report
and the demo's live view); this module parses the range, adds the ``deploy`` and ``rollback``
events of the models topic when a :class:`monitors.model_feed.ModelEventFeed` is attached to the
app, and maps rules to their metrics.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request
from sqlalchemy import Engine

from atalaia.events import utcnow
from atalaia.storage.canaries import canary_summaries
from atalaia.storage.readmodel import (
    CHARTS,
    DEFAULT_WINDOW_S,
    alert_transitions,
    chart_series,
    deploys,
    model_versions_seen,
    open_alerts,
    parse_since,
)

log = logging.getLogger(__name__)


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


@router.get("/scoring")
def get_scoring(request: Request, since: str | None = SINCE, until: str | None = UNTIL) -> dict[str, Any]:
    """Event-to-row delay, the scoring budget and each expensive group's sampling fraction in the range."""
    from monitors.scoring_status import scoring_status

    start, end = _range(since, until)
    with _engine(request).connect() as conn:
        return scoring_status(conn, start, end, request.app.state.settings.scoring_budget)
