"""What the report shows, read from the tables: metric series, drift tests, alerts, deploys, runs.

The queries are the kernel's read model (:mod:`atalaia.storage.readmodel`, shared with the
dashboard and the demo's live view); this module picks the range, the bucket width and the
metrics, and assembles the before/after holdout table and the totals:

- series per model version and time bucket from the ``metrics`` rows (``latency_ms`` p95 and
  row count as request rate, ``cost`` sum, ``rougeL`` and toxicity means); when the range holds
  more than :data:`MAX_RAW_ROWS` rows they come from the 1-minute ``metric_windows`` instead;
- drift tests from the ``embedding_drift`` rows, whose ``labels.threshold`` is the calibrated
  threshold (``consumers/drift.py``);
- alert lifecycles from ``alerts`` (one row per transition, tied by ``alert_id``);
- deploys and rollbacks from ``model_versions.activated_at`` and ``status``;
- retraining runs from ``retrain_runs`` (the ``gate`` step holds candidate and active holdout
  scores), and holdout scores cached in ``model_versions.metrics`` under ``holdout:<n>:<rag>[:<digest>]``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, func, select

from atalaia.events import utcnow
from atalaia.metrics.groups import registry
from atalaia.metrics.stats import percentile
from atalaia.storage import readmodel
from atalaia.storage import tables as t
from atalaia.storage.canaries import canary_summaries
from atalaia.storage.readmodel import Alert, Deploy, DriftTest, Run, Series, Transition
from atalaia.storage.readmodel.models import finite_floats
from atalaia.storage.repository import as_utc

log = logging.getLogger(__name__)

#: Above this many metric rows in the range, series come from ``metric_windows`` (1-minute).
MAX_RAW_ROWS = 300_000
#: Most points per series; the bucket width grows with the range to stay under it.
MAX_BUCKETS = readmodel.REPORT_MAX_BUCKETS
#: Bucket widths tried, in seconds.
BUCKET_STEPS = readmodel.BUCKET_STEPS
#: Window length the workers materialize (``consumers/worker.py``).
WINDOW_S = readmodel.DEFAULT_WINDOW_S
#: Most drift tests drawn per model version; more are reduced to the maximum per bucket.
MAX_DRIFT_POINTS = readmodel.MAX_DRIFT_POINTS
#: Most alert transitions read.
MAX_ALERT_ROWS = readmodel.MAX_ALERT_ROWS
#: Metric names the charts draw.
#: The report's own charts, and those of every other metric group's windowed charts (registry).
SERIES_METRICS = tuple(
    dict.fromkeys(
        [
            "latency_ms",
            "cost",
            "rougeL",
            "toxicity_response",
            "toxicity_prompt",
            *(c.metric for c in registry.charts() if c.source == "windows"),
        ]
    )
)
DRIFT_METRIC = readmodel.DRIFT_METRIC
#: Metrics where a lower value is better (for the direction of a change in the holdout table).
LOWER_IS_BETTER = ("toxicity", "perplexity", "ppl", "latency", "cost", "loss", "drift", "error")


@dataclass
class Holdout:
    """The before/after table: holdout scores per model version (old first)."""

    versions: list[str]
    scores: dict[str, dict[str, float]]
    source: str

    @property
    def metrics(self) -> list[str]:
        """Every metric scored for any version, in first-seen order."""
        return list(dict.fromkeys(m for v in self.versions for m in self.scores.get(v, {})))


@dataclass
class ReportData:
    """Everything a report draws, for one time range."""

    start: datetime
    end: datetime
    generated_at: datetime
    bucket_s: int
    source: str
    versions: list[str]
    series: list[Series]
    drift: list[DriftTest]
    alerts: list[Alert]
    deploys: list[Deploy]
    runs: list[Run]
    holdout: Holdout
    registry: list[dict[str, Any]]
    requests: int
    totals: dict[str, dict[str, float | None]] = field(default_factory=dict)
    #: Traffic-split canaries started in the range (:func:`atalaia.storage.canaries.canary_summaries`).
    canaries: list[dict[str, Any]] = field(default_factory=list)

    def series_for(self, metric: str, stat: str) -> list[Series]:
        """The series of one metric statistic, one per model version."""
        return [s for s in self.series if s.metric == metric and s.stat == stat]


def lower_is_better(metric: str) -> bool:
    """Whether a smaller value of ``metric`` is an improvement.

    >>> lower_is_better("toxicity_response"), lower_is_better("rouge_l"), lower_is_better("perplexity")
    (True, False, True)
    """
    name = metric.lower()
    return any(word in name for word in LOWER_IS_BETTER)


def registry_holdout(metrics: Mapping[str, Any] | None) -> dict[str, float]:
    """A version's holdout scores from ``model_versions.metrics`` (keys ``holdout:<limit>:<rag|norag>[:<digest>]``).

    The RAG evaluation on the largest question count wins when several are cached.

    >>> registry_holdout({"holdout:24:rag": {"rouge_l": 0.31}, "holdout:8:norag": {"rouge_l": 0.2}, "run_id": "x"})
    {'rouge_l': 0.31}
    """
    keys = []
    for key, value in (metrics or {}).items():
        parts = str(key).split(":")
        if len(parts) in (3, 4) and parts[0] == "holdout" and isinstance(value, dict):
            limit = int(parts[1]) if parts[1].isdigit() else 0
            keys.append((parts[2] == "rag", limit == 0, limit, key))
    if not keys:
        return {}
    return finite_floats((metrics or {})[max(keys)[3]])


def holdout_table(
    registry: Sequence[Mapping[str, Any]], runs: Sequence[Run], holdout: Mapping[str, Mapping[str, Any]] | None
) -> Holdout:
    """The before/after holdout scores: the ``holdout`` argument when given, else the latest gate, else the registry.

    From the registry, the pair is the newest version that has a parent, and that parent; a
    version's own cached scores win over the ``parent_holdout`` copy the child stores.
    """
    if holdout:
        scores = {str(v): finite_floats(dict(s)) for v, s in holdout.items()}
        return Holdout(list(scores), scores, "holdout evaluation passed to the report")
    gated = [r for r in runs if r.candidate and r.active]
    if gated:
        run = next((r for r in reversed(gated) if r.status == "deployed"), gated[-1])
        old = run.active_version or "active"
        new = run.candidate_version or "candidate"
        return Holdout(
            [old, new], {old: run.active, new: run.candidate}, f"gate of retraining run {run.run_id[:8]} ({run.status})"
        )
    by_version = {str(r["version"]): r for r in registry}
    children = [r for r in registry if r["parent"] is not None]
    for child in sorted(children, key=lambda r: as_utc(r["created_at"]), reverse=True):
        new_scores = registry_holdout(child["metrics"])
        parent = by_version.get(str(child["parent"]))
        old_scores = registry_holdout(parent["metrics"]) if parent is not None else {}
        old_scores = old_scores or finite_floats((child["metrics"] or {}).get("parent_holdout"))
        if new_scores or old_scores:
            old, new = str(child["parent"]), str(child["version"])
            return Holdout([old, new], {old: old_scores, new: new_scores}, "model registry (model_versions.metrics)")
    scored = [(str(r["version"]), registry_holdout(r["metrics"])) for r in registry]
    scored = [(v, s) for v, s in scored if s]
    if scored:
        return Holdout([v for v, _ in scored], dict(scored), "model registry (model_versions.metrics)")
    return Holdout([], {}, "no holdout evaluation recorded")


# -- the whole report ---------------------------------------------------------------------------
def _order_versions(series: Iterable[Series], drift: Iterable[DriftTest], deploys: Iterable[Deploy]) -> list[str]:
    first: dict[str, datetime] = {}
    for s in series:
        for ts, value in s.points:
            if value is not None:
                first[s.version] = min(first.get(s.version, ts), ts)
                break
    for test in drift:
        first[test.version] = min(first.get(test.version, test.ts), test.ts)
    for deploy in deploys:
        first.setdefault(deploy.version, deploy.ts)
    return sorted(first, key=lambda v: (first[v], v))


def load_report_data(
    engine: Engine,
    since: datetime | None = None,
    until: datetime | None = None,
    holdout: Mapping[str, Mapping[str, Any]] | None = None,
) -> ReportData:
    """Read everything the report shows between ``since`` (default: 24 hours ago) and ``until`` (now).

    The drawn range is narrowed to where there is data, so a report over a quiet day does not
    squeeze a ten-minute demo into one pixel.
    """
    now = utcnow()
    until = as_utc(until) if until is not None else now
    since = as_utc(since) if since is not None else until - timedelta(hours=24)
    with engine.connect() as conn:
        found = readmodel.data_range(conn, since, until)
        start, end = found if found is not None else (since, until)
        if (end - start).total_seconds() < 60:
            end = min(start + timedelta(seconds=60), max(until, start + timedelta(seconds=60)))
        raw_rows = int(
            conn.execute(
                select(func.count())
                .select_from(t.metrics)
                .where(t.metrics.c.name.in_(SERIES_METRICS), t.metrics.c.ts >= start, t.metrics.c.ts <= end)
            ).scalar_one()
        )
        span = (end - start).total_seconds()
        answered = int(
            conn.execute(
                select(func.count())
                .select_from(t.metrics)
                .where(t.metrics.c.name == "latency_ms", t.metrics.c.ts >= start, t.metrics.c.ts <= end)
            ).scalar_one()
        )
        if raw_rows > MAX_RAW_ROWS:
            width = readmodel.bucket_seconds(span, WINDOW_S, MAX_BUCKETS, BUCKET_STEPS, answered)
            series, extra = readmodel.windowed_series(conn, SERIES_METRICS, start, end, width, WINDOW_S)
            source = f"1-minute windows (metric_windows), {width} s buckets"
        else:
            width = readmodel.bucket_seconds(span, BUCKET_STEPS[0], MAX_BUCKETS, BUCKET_STEPS, answered)
            series, extra = readmodel.raw_series(conn, SERIES_METRICS, start, end, width)
            source = f"metric rows ({raw_rows:,}), {width} s buckets"
        drift = readmodel.drift_tests(conn, start, end, width, MAX_DRIFT_POINTS)
        alerts = readmodel.alert_episodes(conn, start, end, MAX_ALERT_ROWS)
        deploys, registry = readmodel.deploy_history(conn, start, end)
        runs = readmodel.retrain_runs(conn, start, end)
        # The requested range, not the narrowed one: a canary starts before its first answers.
        canaries = [c for c in canary_summaries(conn, since) if c["started_at"] <= until.isoformat()]
        requests = int(
            conn.execute(
                select(func.count())
                .select_from(t.inference_events)
                .where(t.inference_events.c.ts >= start, t.inference_events.c.ts <= end)
            ).scalar_one()
        )
    versions = _order_versions(series, drift, deploys)
    totals = _totals(versions, extra, drift)
    return ReportData(
        start=start,
        end=end,
        generated_at=now,
        bucket_s=width,
        source=source,
        versions=versions,
        series=series,
        drift=drift,
        alerts=alerts,
        deploys=deploys,
        runs=runs,
        holdout=holdout_table(registry, runs, holdout),
        registry=registry,
        requests=requests,
        totals=totals,
        canaries=canaries,
    )


def _totals(versions: Sequence[str], extra: Mapping[str, Any], drift: Sequence[DriftTest]) -> dict[str, dict[str, Any]]:
    """Per version over the whole range: request count, mean ROUGE-L and toxicity, p95 latency, cost."""
    out: dict[str, dict[str, Any]] = {}
    for version in versions:
        row: dict[str, Any] = {}
        if "raw" in extra:
            raw: Mapping[tuple[str, str], list[float]] = extra["raw"]
            lat = raw.get(("latency_ms", version), [])
            row["requests"] = len(lat)
            row["latency_p95_ms"] = percentile(lat, 95) if lat else None
            row["cost_usd"] = sum(raw.get(("cost", version), [])) if raw.get(("cost", version)) else None
            for name in ("rougeL", "toxicity_response", "toxicity_prompt"):
                values = raw.get((name, version), [])
                row[name] = sum(values) / len(values) if values else None
        else:
            windows: Mapping[tuple[str, str], tuple[int, float, float]] = extra["windows"]
            n, _, p95 = windows.get(("latency_ms", version), (0, 0.0, -math.inf))
            row["requests"] = n
            row["latency_p95_ms"] = p95 if math.isfinite(p95) else None  # the worst 1-minute p95
            cost = windows.get(("cost", version))
            row["cost_usd"] = cost[1] if cost else None
            for name in ("rougeL", "toxicity_response", "toxicity_prompt"):
                agg = windows.get((name, version))
                row[name] = agg[1] / agg[0] if agg and agg[0] else None
        tests = [d for d in drift if d.version == version]
        row["drift_max"] = max((d.score for d in tests), default=None)
        row["drift_threshold"] = next((d.threshold for d in reversed(tests) if d.threshold is not None), None)
        row["drift_tests"] = len(tests)
        out[version] = row
    return out


def summarize(engine: Engine, since: datetime | None = None, until: datetime | None = None) -> dict[str, Any]:
    """The report's key numbers as plain JSON-able values, for a terminal summary.

    Keys: ``start``, ``end`` (ISO strings), ``requests`` (inference events), ``active_version``,
    ``versions`` (per version: ``requests``, ``latency_p95_ms``, ``cost_usd``, ``rougeL``,
    ``toxicity_response``, ``toxicity_prompt``, ``drift_max``, ``drift_threshold``,
    ``drift_tests``; ``None`` where nothing was measured), ``alerts`` (``fired``, ``resolved``,
    ``open`` counts and ``rules``: rule → latest state), ``deploys`` (``ts``, ``version``,
    ``kind``), ``runs`` (``run_id``, ``status``, ``trigger``, ``candidate_version``, ``reasons``)
    and ``holdout`` (``versions``, ``scores``, ``source``).
    """
    return summary_of(load_report_data(engine, since, until))


def summary_of(data: ReportData) -> dict[str, Any]:
    """The summary dict of :func:`summarize` for already loaded data."""
    actives = [r for r in data.registry if r["status"] == "active" and r["activated_at"] is not None]
    active = max(actives, key=lambda r: as_utc(r["activated_at"]))["version"] if actives else None
    rules: dict[str, str] = {}
    for alert in data.alerts:
        rules[alert.rule] = alert.state
    return {
        "start": data.start.isoformat(),
        "end": data.end.isoformat(),
        "requests": data.requests,
        "active_version": active,
        "versions": {v: dict(data.totals.get(v, {})) for v in data.versions},
        "alerts": {
            "fired": sum(1 for a in data.alerts if a.fired is not None),
            "resolved": sum(1 for a in data.alerts if a.resolved is not None),
            "open": sum(1 for a in data.alerts if a.state != "resolved"),
            "rules": rules,
        },
        "deploys": [{"ts": d.ts.isoformat(), "version": d.version, "kind": d.kind} for d in data.deploys],
        "canaries": [
            {
                k: c[k]
                for k in ("candidate", "parent", "share", "mode", "state", "decision", "requests", "samples", "horizon")
            }
            for c in data.canaries
        ],
        "runs": [
            {
                "run_id": r.run_id,
                "status": r.status,
                "trigger": r.trigger,
                "candidate_version": r.candidate_version,
                "reasons": r.reasons,
            }
            for r in data.runs
        ],
        "holdout": {
            "versions": data.holdout.versions,
            "scores": data.holdout.scores,
            "source": data.holdout.source,
        },
    }


__all__ = [
    "Alert",
    "Deploy",
    "DriftTest",
    "Holdout",
    "ReportData",
    "Run",
    "Series",
    "Transition",
    "holdout_table",
    "load_report_data",
    "lower_is_better",
    "registry_holdout",
    "summarize",
    "summary_of",
]
