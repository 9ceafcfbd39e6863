"""The read model: what the dashboard, the report and the demo's live view read from the tables.

One set of queries and bucket rules over ``metrics`` and ``metric_windows`` (materialized by the
workers), ``alerts`` (with ``alert_acks``), ``model_versions`` and ``retrain_runs``, so the three
views agree on what "the latest state of an alert", "a deploy" or "a bucket" means. Queries are
plain SQLAlchemy Core, so the same code runs on SQLite and PostgreSQL. The views themselves live
with their callers: the dashboard's HTTP routes (``monitors/dashboard.py``), the HTML report
(``composition/report/``) and the demo's terminal (``composition/cli/demo.py``).

- :mod:`~atalaia.storage.readmodel.ranges`: look-backs, epoch times, bucket widths, data range;
- :mod:`~atalaia.storage.readmodel.series`: metric and drift series, recent levels;
- :mod:`~atalaia.storage.readmodel.alerts`: latest transition per alert, open alerts, lifecycles;
- :mod:`~atalaia.storage.readmodel.models`: deploys, rollbacks, versions seen, retraining runs.
"""

from __future__ import annotations

from atalaia.storage.readmodel.alerts import (
    MAX_ALERT_ROWS,
    MAX_TRANSITIONS,
    OPEN_STATES,
    Alert,
    Transition,
    alert_episodes,
    alert_states_since,
    alert_transitions,
    fired_since,
    latest_alert_rows,
    latest_transitions,
    open_alerts,
)
from atalaia.storage.readmodel.models import (
    Deploy,
    Run,
    deploy_history,
    deploys,
    latest_run,
    model_versions_seen,
    retrain_runs,
)
from atalaia.storage.readmodel.ranges import (
    BUCKET_STEPS,
    DEFAULT_WINDOW_S,
    MAX_POINTS,
    MAX_RANGE,
    MIN_EVENTS_PER_BUCKET,
    REPORT_MAX_BUCKETS,
    bucket_seconds,
    bucket_start,
    data_range,
    downsample,
    epoch_ms,
    parse_since,
)
from atalaia.storage.readmodel.series import (
    CHARTS,
    CHARTS_BY_KEY,
    DERIVED_STATS,
    DRIFT_METRIC,
    MAX_DRIFT_POINTS,
    MAX_DRIFT_ROWS,
    WINDOW_STATS,
    DriftTest,
    Series,
    chart_series,
    drift_series,
    drift_tests,
    raw_series,
    recent_levels,
    window_series,
    windowed_series,
)

__all__ = [
    "BUCKET_STEPS",
    "CHARTS",
    "CHARTS_BY_KEY",
    "DEFAULT_WINDOW_S",
    "DERIVED_STATS",
    "DRIFT_METRIC",
    "MAX_ALERT_ROWS",
    "MAX_DRIFT_POINTS",
    "MAX_DRIFT_ROWS",
    "MAX_POINTS",
    "MAX_RANGE",
    "MAX_TRANSITIONS",
    "MIN_EVENTS_PER_BUCKET",
    "OPEN_STATES",
    "REPORT_MAX_BUCKETS",
    "WINDOW_STATS",
    "Alert",
    "Deploy",
    "DriftTest",
    "Run",
    "Series",
    "Transition",
    "alert_episodes",
    "alert_states_since",
    "alert_transitions",
    "bucket_seconds",
    "bucket_start",
    "chart_series",
    "data_range",
    "deploy_history",
    "deploys",
    "downsample",
    "drift_series",
    "drift_tests",
    "epoch_ms",
    "fired_since",
    "latest_alert_rows",
    "latest_run",
    "latest_transitions",
    "model_versions_seen",
    "open_alerts",
    "parse_since",
    "raw_series",
    "recent_levels",
    "retrain_runs",
    "window_series",
    "windowed_series",
]
