"""What the report shows, read from the tables: metric series, drift tests, alerts, deploys, runs.

Everything comes from :mod:`atalaia.storage.tables` with SQLAlchemy Core, so the same queries run
on SQLite and PostgreSQL, and nothing here imports a service package (the registry's and the
retraining runner's conventions are mirrored, not imported):

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
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, func, select

from atalaia.events import utcnow
from atalaia.metrics.groups import registry
from atalaia.metrics.stats import percentile
from atalaia.storage import tables as t
from atalaia.storage.canaries import canary_summaries
from atalaia.storage.repository import as_utc

log = logging.getLogger(__name__)

#: Above this many metric rows in the range, series come from ``metric_windows`` (1-minute).
MAX_RAW_ROWS = 300_000
#: Most points per series; the bucket width grows with the range to stay under it.
MAX_BUCKETS = 120
#: Requests per bucket wanted on average (percentiles and rates of fewer are noise).
MIN_EVENTS_PER_BUCKET = 5
#: Bucket widths tried, in seconds.
BUCKET_STEPS = (5, 10, 15, 20, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)
#: Window length the workers materialize (``consumers/worker.py``).
WINDOW_S = 60
#: Most drift tests drawn per model version; more are reduced to the maximum per bucket.
MAX_DRIFT_POINTS = 600
#: Most alert transitions read.
MAX_ALERT_ROWS = 5000
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
DRIFT_METRIC = "embedding_drift"
#: Metrics where a lower value is better (for the direction of a change in the holdout table).
LOWER_IS_BETTER = ("toxicity", "perplexity", "ppl", "latency", "cost", "loss", "drift", "error")


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


@dataclass
class Deploy:
    """A model version that became active: a deploy, or a rollback to an older version."""

    ts: datetime
    version: str
    kind: str
    parent: str | None = None
    reason: str = ""


@dataclass
class Run:
    """One retraining run with its gate decision."""

    run_id: str
    status: str
    trigger: str
    started_at: datetime
    finished_at: datetime | None
    candidate_version: str | None
    active_version: str | None
    candidate: dict[str, float]
    active: dict[str, float]
    promote: bool | None
    reasons: list[str]
    error: str | None
    steps: list[dict[str, Any]]


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


def bucket_seconds(span_s: float, minimum: int = BUCKET_STEPS[0], events: int | None = None) -> int:
    """The smallest bucket width of :data:`BUCKET_STEPS` giving at most :data:`MAX_BUCKETS` buckets.

    With ``events`` (requests in the range), buckets also hold :data:`MIN_EVENTS_PER_BUCKET`
    requests on average, so a sparse stream is not drawn as a saw-tooth of 1s and 2s.

    >>> bucket_seconds(600), bucket_seconds(3600), bucket_seconds(86400), bucket_seconds(600, 60)
    (5, 30, 900, 60)
    >>> bucket_seconds(1800, events=180), bucket_seconds(180, events=360)
    (60, 5)
    """
    if events:
        minimum = max(minimum, math.ceil(span_s * MIN_EVENTS_PER_BUCKET / events))
    for step in BUCKET_STEPS:
        if step >= minimum and span_s / step <= MAX_BUCKETS:
            return step
    return BUCKET_STEPS[-1]


def _bucket(ts: datetime, start: datetime, width: int) -> datetime:
    offset = (ts - start).total_seconds()
    return start + timedelta(seconds=offset - offset % width)


def lower_is_better(metric: str) -> bool:
    """Whether a smaller value of ``metric`` is an improvement.

    >>> lower_is_better("toxicity_response"), lower_is_better("rouge_l"), lower_is_better("perplexity")
    (True, False, True)
    """
    name = metric.lower()
    return any(word in name for word in LOWER_IS_BETTER)


# -- time range -----------------------------------------------------------------------------------
def data_range(conn: Connection, since: datetime, until: datetime) -> tuple[datetime, datetime] | None:
    """First and last metric, alert or activation time within ``[since, until]``; ``None`` if nothing."""
    found: list[datetime] = []
    for column in (t.metrics.c.ts, t.alerts.c.ts, t.model_versions.c.activated_at):
        row = conn.execute(select(func.min(column), func.max(column)).where(column >= since, column <= until)).first()
        if row is not None and row[0] is not None:
            found.extend((as_utc(row[0]), as_utc(row[1])))
    if not found:
        return None
    return min(found), max(found)


# -- metric series ----------------------------------------------------------------------------------
def _raw_series(conn: Connection, start: datetime, end: datetime, width: int) -> tuple[list[Series], dict[str, Any]]:
    rows = conn.execute(
        select(t.metrics.c.ts, t.metrics.c.model_version, t.metrics.c.name, t.metrics.c.value).where(
            t.metrics.c.name.in_(SERIES_METRICS), t.metrics.c.ts >= start, t.metrics.c.ts <= end
        )
    )
    groups: dict[tuple[str, str, datetime], list[float]] = defaultdict(list)
    counts: dict[tuple[str, str, datetime], int] = defaultdict(int)
    totals: dict[tuple[str, str], list[float]] = defaultdict(list)
    for row in rows:
        name, version, value = str(row.name), str(row.model_version), row.value
        key = (name, version, _bucket(as_utc(row.ts), start, width))
        counts[key] += 1
        if value is not None and math.isfinite(value):
            groups[key].append(float(value))
            totals[(name, version)].append(float(value))
    return _to_series(groups, counts, start, end, width), {"raw": totals}


def _window_series(conn: Connection, start: datetime, end: datetime, width: int) -> tuple[list[Series], dict[str, Any]]:
    rows = conn.execute(
        select(t.metric_windows).where(
            t.metric_windows.c.window_s == WINDOW_S,
            t.metric_windows.c.name.in_(SERIES_METRICS),
            t.metric_windows.c.window_start >= start - timedelta(seconds=WINDOW_S),
            t.metric_windows.c.window_start <= end,
        )
    ).mappings()
    # Each window stands for `count` values at its mean (and its p95); buckets re-aggregate them.
    groups: dict[tuple[str, str, datetime], list[tuple[int, float | None, float | None]]] = defaultdict(list)
    for row in rows:
        ts = max(as_utc(row["window_start"]), start)
        key = (row["name"], row["model_version"], _bucket(ts, start, width))
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


# -- drift, alerts, deploys, runs ------------------------------------------------------------------
def _drift(conn: Connection, start: datetime, end: datetime, width: int) -> list[DriftTest]:
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
        if len(version_tests) > MAX_DRIFT_POINTS:  # keep the highest score of each bucket
            best: dict[datetime, DriftTest] = {}
            for test in version_tests:
                key = _bucket(test.ts, start, width)
                if key not in best or test.score > best[key].score:
                    best[key] = test
            version_tests = sorted(best.values(), key=lambda x: x.ts)
        out.extend(version_tests)
    return sorted(out, key=lambda x: (x.ts, x.version))


def _alerts(conn: Connection, start: datetime, end: datetime) -> list[Alert]:
    # Alerts with a transition in range, plus the earlier transitions of those alerts (an alert
    # that went firing before `start` and resolved inside the range still shows where it began).
    ids = select(t.alerts.c.alert_id).where(t.alerts.c.ts >= start, t.alerts.c.ts <= end).distinct()
    rows = conn.execute(
        select(t.alerts)
        .where(t.alerts.c.alert_id.in_(ids), t.alerts.c.ts <= end)
        .order_by(t.alerts.c.ts, t.alerts.c.event_id)
        .limit(MAX_ALERT_ROWS)
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


def _deploys(conn: Connection, start: datetime, end: datetime) -> tuple[list[Deploy], list[dict[str, Any]]]:
    registry = [
        dict(r) for r in conn.execute(select(t.model_versions).order_by(t.model_versions.c.created_at)).mappings()
    ]
    rolled_back = [r for r in registry if r["status"] == "rolled_back"]
    deploys = []
    for row in registry:
        if row["activated_at"] is None:
            continue
        ts = as_utc(row["activated_at"])
        if not start <= ts <= end:
            continue
        # `roll_back` re-activates the parent, so a version activated after a child of it was
        # deployed and rolled back is a rollback; a version without a parent that becomes active
        # is the base model being registered (it was serving already), not a deploy.
        undone = [
            r
            for r in rolled_back
            if r["parent"] == row["version"] and r["activated_at"] is not None and as_utc(r["activated_at"]) < ts
        ]
        if undone:
            reason = str((undone[-1]["metrics"] or {}).get("rollback_reason", ""))
            deploys.append(Deploy(ts, row["version"], "rollback", row["parent"], reason))
        elif row["parent"] is not None:
            deploys.append(Deploy(ts, row["version"], "deploy", row["parent"]))
    return sorted(deploys, key=lambda d: d.ts), registry


def _floats(value: Any) -> dict[str, float]:
    if not isinstance(value, dict):
        return {}
    out = {}
    for key, item in value.items():
        if isinstance(item, int | float) and not isinstance(item, bool) and math.isfinite(item):
            out[str(key)] = float(item)
    return out


def _runs(conn: Connection, start: datetime, end: datetime) -> list[Run]:
    rows = conn.execute(
        select(t.retrain_runs)
        .where(t.retrain_runs.c.started_at >= start - timedelta(hours=1), t.retrain_runs.c.started_at <= end)
        .order_by(t.retrain_runs.c.started_at)
    ).mappings()
    runs = []
    for row in rows:
        steps = [s for s in (row["steps"] or []) if isinstance(s, dict)]
        gate = next((s.get("details") or {} for s in steps if s.get("name") == "gate"), {})
        finished = as_utc(row["finished_at"]) if row["finished_at"] is not None else None
        if finished is not None and finished < start:
            continue
        reasons = gate.get("reasons") or (row["metrics"] or {}).get("reject_reasons") or []
        runs.append(
            Run(
                run_id=str(row["run_id"]),
                status=row["status"],
                trigger=row["trigger"],
                started_at=as_utc(row["started_at"]),
                finished_at=finished,
                candidate_version=row["candidate_version"],
                active_version=gate.get("active_version"),
                candidate=_floats(gate.get("candidate") or (row["metrics"] or {}).get("candidate")),
                active=_floats(gate.get("active") or (row["metrics"] or {}).get("active")),
                promote=gate.get("promote"),
                reasons=[str(r) for r in reasons] if isinstance(reasons, list) else [str(reasons)],
                error=row["error"],
                steps=steps,
            )
        )
    return runs


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
    return _floats((metrics or {})[max(keys)[3]])


def holdout_table(
    registry: Sequence[Mapping[str, Any]], runs: Sequence[Run], holdout: Mapping[str, Mapping[str, Any]] | None
) -> Holdout:
    """The before/after holdout scores: the ``holdout`` argument when given, else the latest gate, else the registry.

    From the registry, the pair is the newest version that has a parent, and that parent; a
    version's own cached scores win over the ``parent_holdout`` copy the child stores.
    """
    if holdout:
        scores = {str(v): _floats(dict(s)) for v, s in holdout.items()}
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
        old_scores = old_scores or _floats((child["metrics"] or {}).get("parent_holdout"))
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
        found = data_range(conn, since, until)
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
            width = bucket_seconds(span, WINDOW_S, answered)
            series, extra = _window_series(conn, start, end, width)
            source = f"1-minute windows (metric_windows), {width} s buckets"
        else:
            width = bucket_seconds(span, events=answered)
            series, extra = _raw_series(conn, start, end, width)
            source = f"metric rows ({raw_rows:,}), {width} s buckets"
        drift = _drift(conn, start, end, width)
        alerts = _alerts(conn, start, end)
        deploys, registry = _deploys(conn, start, end)
        runs = _runs(conn, start, end)
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
            {k: c[k] for k in ("candidate", "parent", "share", "mode", "state", "decision", "requests")}
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
    "bucket_seconds",
    "holdout_table",
    "load_report_data",
    "lower_is_better",
    "registry_holdout",
    "summarize",
    "summary_of",
]
