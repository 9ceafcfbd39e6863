"""Rule evaluation over the metric stream: windows per (rule, labels) and the alert state machine.

Pure: it takes metric events and a clock value, and returns alert transitions. The service around
it (``monitors.service``) does the Kafka and database I/O.
"""

from __future__ import annotations

import hashlib
import json
import math
import uuid
from bisect import insort
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from atalaia.events import AlertEvent, MetricEvent
from monitors.aggregate import aggregate
from monitors.rules import Rule


def fingerprint(rule: str, labels: dict[str, str]) -> str:
    """Stable identity of an alert: rule plus its labels (deduplication key).

    >>> fingerprint("r", {"b": "2", "a": "1"}) == fingerprint("r", {"a": "1", "b": "2"})
    True
    """
    blob = json.dumps([rule, sorted(labels.items())], separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class OpenAlert:
    """An alert that is pending or firing."""

    alert_id: uuid.UUID
    state: str
    started_at: datetime
    value: float | None = None


@dataclass
class Series:
    """Samples of one rule and label set, kept in event-time order."""

    labels: dict[str, str]
    samples: deque[tuple[datetime, float]] = field(default_factory=deque)


class RuleEvaluator:
    """Evaluates threshold rules; emits pending/firing/resolved transitions.

    Examples
    --------
    >>> from datetime import UTC
    >>> import uuid
    >>> rule = Rule(name="slow", metric="latency_ms", aggregation="max", window_s=60, threshold=100, **{"for": 10})
    >>> ev = RuleEvaluator([rule])
    >>> t0 = datetime(2026, 1, 1, tzinfo=UTC)
    >>> def m(v, t):
    ...     return MetricEvent(source_event_id=uuid.uuid4(), source_ts=t, service="s", model_version="v1",
    ...                        name="latency_ms", value=v)
    >>> ev.observe(m(500.0, t0))
    >>> [a.state for a in ev.evaluate(t0)]
    ['pending']
    >>> [a.state for a in ev.evaluate(t0 + timedelta(seconds=10))]
    ['firing']
    >>> [a.state for a in ev.evaluate(t0 + timedelta(seconds=61))]
    ['resolved']
    """

    def __init__(self, rules: list[Rule], max_samples_per_series: int = 200_000) -> None:
        self.rules = {r.name: r for r in rules}
        self._by_metric: dict[str, list[Rule]] = {}
        for r in rules:
            self._by_metric.setdefault(r.metric, []).append(r)
        self._series: dict[tuple[str, str], Series] = {}
        self._open: dict[tuple[str, str], OpenAlert] = {}
        self._max_samples = max_samples_per_series

    @staticmethod
    def _labels(rule: Rule, metric: MetricEvent) -> dict[str, str]:
        source = {"model_version": metric.model_version, "service": metric.service}
        return {k: source[k] for k in rule.group_by}

    def observe(self, metric: MetricEvent) -> None:
        """Add one metric sample to every rule that watches it."""
        if metric.value is None or math.isnan(metric.value):
            return
        for rule in self._by_metric.get(metric.name, ()):
            if rule.filter.get("model_version", metric.model_version) != metric.model_version:
                continue
            if rule.filter.get("service", metric.service) != metric.service:
                continue
            labels = self._labels(rule, metric)
            key = (rule.name, fingerprint(rule.name, labels))
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = Series(labels)
            sample = (metric.source_ts, float(metric.value))
            if not series.samples or sample[0] >= series.samples[-1][0]:
                series.samples.append(sample)
            else:  # late arrival: keep time order so pruning from the left stays correct
                ordered = list(series.samples)
                insort(ordered, sample, key=lambda s: s[0])
                series.samples = deque(ordered)
            while len(series.samples) > self._max_samples:
                series.samples.popleft()

    def restore(self, rule: str, labels: dict[str, str], alert_id: uuid.UUID, state: str, started_at: datetime) -> None:
        """Re-open an alert that was pending or firing before a restart (no transition emitted)."""
        if rule in self.rules:
            key = (rule, fingerprint(rule, labels))
            self._open[key] = OpenAlert(alert_id, state, started_at)
            self._series.setdefault(key, Series(labels))

    def open_alerts(self) -> dict[tuple[str, str], OpenAlert]:
        """Currently pending or firing alerts, keyed by (rule, fingerprint)."""
        return dict(self._open)

    def evaluate(self, now: datetime) -> list[AlertEvent]:
        """Evaluate every series at time ``now``; return the transitions that happened."""
        out: list[AlertEvent] = []
        for key in list(self._series):
            rule_name, fp = key
            rule = self.rules[rule_name]
            series = self._series[key]
            horizon = now - timedelta(seconds=rule.window_s)
            while series.samples and series.samples[0][0] < horizon:
                series.samples.popleft()
            values = [v for _, v in series.samples]
            value = aggregate(rule.aggregation, values, rule.window_s) if len(values) >= rule.min_samples else math.nan
            breached = not math.isnan(value) and rule.breached(value)
            current = self._open.get(key)
            if breached:
                if current is None:
                    current = self._open[key] = OpenAlert(uuid.uuid4(), "pending", now, value)
                    out.append(self._transition(rule, series.labels, fp, current, now, value))
                current.value = value
                if current.state == "pending" and (now - current.started_at).total_seconds() >= rule.for_s:
                    current.state = "firing"
                    out.append(self._transition(rule, series.labels, fp, current, now, value))
            elif current is not None:
                current.state = "resolved"
                out.append(
                    self._transition(rule, series.labels, fp, current, now, None if math.isnan(value) else value)
                )
                del self._open[key]
            if not series.samples and key not in self._open:
                del self._series[key]
        return out

    @staticmethod
    def _transition(
        rule: Rule, labels: dict[str, str], fp: str, alert: OpenAlert, now: datetime, value: float | None
    ) -> AlertEvent:
        summary = rule.annotations.get(
            "summary", f"{rule.aggregation}({rule.metric}) over {rule.window_s:g}s {rule.comparator} {rule.threshold:g}"
        )
        return AlertEvent(
            ts=now,
            alert_id=alert.alert_id,
            fingerprint=fp,
            rule=rule.name,
            state=alert.state,  # type: ignore[arg-type]
            severity=rule.severity,
            labels={"alertname": rule.name, **rule.labels, **labels},
            annotations={**rule.annotations, "summary": summary},
            value=value,
            threshold=rule.threshold,
            action=rule.action,
            started_at=alert.started_at,
        )
