"""Rule evaluation over the metric stream: windows per (rule, labels) and the alert state machine.

Pure: it takes metric events and a clock value, and returns alert transitions. The service around
it (``monitors.service``) does the Kafka and database I/O.
"""

from __future__ import annotations

import hashlib
import json
import math
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from atalaia.drift.base import DriftDetector
from atalaia.events import AlertEvent, MetricEvent
from monitors.aggregate import Window
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
    #: ``event_id`` of the latest transition (the firing one while firing): what receivers were told.
    event_id: uuid.UUID | None = None
    #: Since when a firing alert has been on the safe side (``resolve_for`` hysteresis).
    clear_since: datetime | None = None


@dataclass
class Series:
    """Samples of one rule and label set, kept in event-time order (or its detector's state)."""

    labels: dict[str, str]
    #: Time-ordered samples with incrementally kept aggregates (monitors.aggregate.Window).
    samples: Window = field(default_factory=Window)
    detector: DriftDetector | None = None
    detections: deque[datetime] = field(default_factory=deque)
    #: First values of the series until the rule's baseline is complete, then its mean.
    baseline_values: list[float] = field(default_factory=list)
    baseline: float | None = None

    @property
    def keep(self) -> bool:
        """Whether the series holds state beyond its window (a detector, a baseline)."""
        return self.detector is not None or bool(self.baseline_values) or self.baseline is not None


class RuleEvaluator:
    """Evaluates rules; emits pending/firing/resolved transitions.

    The lifecycle of one (rule, labels) series: ``pending`` when the threshold is first broken,
    ``firing`` once it has stayed unresolved for ``for`` seconds and is breached at that moment,
    ``resolved`` when the value is back on the safe side of ``resolve_threshold`` (for a firing
    alert: continuously for ``resolve_for`` seconds). A value between the two thresholds keeps an
    open alert as it is, so a value hovering at the threshold does not flap. A window without
    enough samples follows the rule's ``on_no_data``: ``keep`` (default) changes nothing while
    the whole rule is without data (a stalled pipeline), but counts as safe when other series of
    the same rule still get samples in the window (the series' version or service went idle, for
    example a model version replaced by a deploy, while the pipeline flows); ``resolve`` counts
    as safe; ``alert`` as breached. A detector rule is breached while its
    detector signalled a change within the last ``window`` seconds.

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
    >>> [a.state for a in ev.evaluate(t0 + timedelta(seconds=61))]  # no data: the alert keeps firing
    []
    >>> ev.observe(m(50.0, t0 + timedelta(seconds=70)))
    >>> [a.state for a in ev.evaluate(t0 + timedelta(seconds=70))]  # a safe value resolves it
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
        #: Per rule, the newest sample time of its two most recently fed series, as
        #: ``[(fingerprint, time), ...]`` newest first: tells a stalled pipeline (every series
        #: silent) from one idle series while *another* flows (on_no_data: keep). A series
        #: thinning out on its own (users paused) is no sign that it recovered.
        self._last_seen: dict[str, list[tuple[str, datetime]]] = {}

    @staticmethod
    def _labels(rule: Rule, metric: MetricEvent) -> dict[str, str]:
        source = {"model_version": metric.model_version, "service": metric.service}
        return {k: source[k] for k in rule.group_by}

    def _series_for(self, rule: Rule, key: tuple[str, str], labels: dict[str, str]) -> Series:
        series = self._series.get(key)
        if series is None:
            detector = rule.detector.build() if rule.detector is not None else None
            series = self._series[key] = Series(labels, detector=detector)
        return series

    def observe(self, metric: MetricEvent) -> None:
        """Add one metric sample to every rule that watches it.

        A metric with an error instead of a value counts for ``error_share`` rules, and as one
        arrival for ``count`` and ``rate`` rules (a request that failed is still a request: a
        service whose calls all fail has not stopped sending); other aggregations skip it.
        """
        failed = metric.value is None or math.isnan(metric.value)
        for rule in self._by_metric.get(metric.name, ()):
            error_share = rule.aggregation == "error_share" and rule.detector is None
            arrivals = rule.aggregation in ("count", "rate") and rule.detector is None
            if failed and not (error_share or arrivals):
                continue
            if rule.filter.get("model_version", metric.model_version) != metric.model_version:
                continue
            if rule.filter.get("service", metric.service) != metric.service:
                continue
            labels = self._labels(rule, metric)
            key = (rule.name, fingerprint(rule.name, labels))
            series = self._series_for(rule, key, labels)
            if error_share:
                value = 1.0 if failed else 0.0
            elif failed:  # an arrival for count / rate, whose value is never read
                value = 0.0
            else:
                assert metric.value is not None
                value = float(metric.value)
            if series.detector is not None:
                # Detectors see samples in arrival order; a detection is stamped with event time.
                series.detector.update(value)
                if series.detector.drift_detected:
                    series.detections.append(metric.source_ts)
                    series.detector.reset()  # learn the new regime; a later change is a new detection
                continue
            if rule.baseline is not None and series.baseline is None:
                series.baseline_values.append(value)
                if len(series.baseline_values) >= rule.baseline.samples:
                    series.baseline = sum(series.baseline_values) / len(series.baseline_values)
                    series.baseline_values = []
            sample = (metric.source_ts, value)
            self._note_seen(rule.name, key[1], sample[0])
            # A late arrival is inserted in time order, so pruning from the left stays correct.
            # A sampled metric (scoring budget) stands for 1 / sample_fraction events.
            series.samples.insert(sample, weight=1.0 / metric.sample_fraction)
            while len(series.samples) > self._max_samples:
                series.samples.popleft()

    def _note_seen(self, rule: str, fp: str, ts: datetime) -> None:
        """Keep the newest sample times of the rule's two most recently fed series."""
        latest = self._last_seen.get(rule)
        if latest and latest[0][0] == fp:  # the common case, on every sample: the newest series again
            if ts > latest[0][1]:
                latest[0] = (fp, ts)
            return
        seen = [(f, t) for f, t in latest or [] if f != fp]
        mine = max([t for f, t in self._last_seen.get(rule, []) if f == fp] + [ts])
        self._last_seen[rule] = sorted([*seen, (fp, mine)], key=lambda item: item[1], reverse=True)[:2]

    def _others_flow(self, rule: str, fp: str, horizon: datetime, now: datetime) -> bool:
        """Whether a series of ``rule`` other than ``fp`` had a sample in ``[horizon, now]``.

        >>> from datetime import UTC
        >>> ev = RuleEvaluator([])
        >>> t0 = datetime(2026, 1, 1, tzinfo=UTC)
        >>> ev._note_seen("r", "v1", t0)
        >>> ev._others_flow("r", "v1", t0 - timedelta(seconds=60), t0)  # only itself
        False
        >>> ev._note_seen("r", "v2", t0 + timedelta(seconds=5))
        >>> ev._others_flow("r", "v1", t0, t0 + timedelta(seconds=10)), ev._others_flow("r", "v2", t0, t0)
        (True, True)
        """
        return any(f != fp and horizon <= t <= now for f, t in self._last_seen.get(rule, []))

    def restore(
        self,
        rule: str,
        labels: dict[str, str],
        alert_id: uuid.UUID,
        state: str,
        started_at: datetime,
        event_id: uuid.UUID | None = None,
    ) -> None:
        """Re-open an alert that was pending or firing before a restart (no transition emitted)."""
        if rule in self.rules:
            key = (rule, fingerprint(rule, labels))
            self._open[key] = OpenAlert(alert_id, state, started_at, event_id=event_id)
            self._series_for(self.rules[rule], key, labels)

    def seed_baseline(self, rule: str, labels: dict[str, str], values: list[float]) -> bool:
        """Set a series' baseline from its first values (after a restart); False if too few or unknown."""
        spec = self.rules[rule].baseline if rule in self.rules else None
        if spec is None or len(values) < spec.samples:
            return False
        key = (rule, fingerprint(rule, labels))
        series = self._series_for(self.rules[rule], key, labels)
        first = values[: spec.samples]
        series.baseline, series.baseline_values = sum(first) / len(first), []
        return True

    def open_alerts(self) -> dict[tuple[str, str], OpenAlert]:
        """Currently pending or firing alerts, keyed by (rule, fingerprint)."""
        return dict(self._open)

    def _value(self, rule: Rule, series: Series, fp: str, now: datetime) -> tuple[float, bool, bool]:
        """(value, breached, clear) of one series at ``now``; no data follows ``rule.on_no_data``."""
        horizon = now - timedelta(seconds=rule.window_s)
        if series.detector is not None:
            while series.detections and series.detections[0] < horizon:
                series.detections.popleft()
            # Only detections up to `now`: replayed history must not look like the future.
            count = float(sum(1 for d in series.detections if d <= now))
            return count, count > 0, count == 0
        series.samples.prune(horizon)
        n = len(series.samples)
        if n < rule.min_samples:
            if rule.on_no_data == "alert":
                return math.nan, True, False
            if rule.on_no_data == "keep":
                return math.nan, False, self._others_flow(rule.name, fp, horizon, now)
            return math.nan, False, True
        # Kept up to date as samples come and go: the cost does not grow with the window.
        value = series.samples.value(rule.aggregation, rule.window_s, rule.share_above)
        if rule.baseline is not None:
            base = series.baseline
            # No baseline yet (or a zero one, where a relative change means nothing): not evaluated.
            value = (value - base) / abs(base) if base else math.nan
        if math.isnan(value):
            return value, False, True
        return value, rule.breached(value), rule.cleared(value)

    def evaluate(self, now: datetime) -> list[AlertEvent]:
        """Evaluate every series at time ``now``; return the transitions that happened."""
        out: list[AlertEvent] = []
        for key in list(self._series):
            rule_name, fp = key
            rule = self.rules[rule_name]
            series = self._series[key]
            value, breached, clear = self._value(rule, series, fp, now)
            shown = None if math.isnan(value) else value
            current = self._open.get(key)
            if current is None and breached:
                current = self._open[key] = OpenAlert(uuid.uuid4(), "pending", now, value)
                out.append(self._transition(rule, series.labels, fp, current, now, shown))
            if current is not None:
                if shown is not None:
                    current.value = shown
                if current.state == "pending":
                    if clear:
                        out.append(self._resolve(key, rule, series, fp, current, now, shown))
                    elif breached and (now - current.started_at).total_seconds() >= rule.for_s:
                        current.state = "firing"
                        out.append(self._transition(rule, series.labels, fp, current, now, shown))
                elif not clear:
                    current.clear_since = None
                else:
                    current.clear_since = current.clear_since or now
                    if (now - current.clear_since).total_seconds() >= rule.resolve_for_s:
                        out.append(self._resolve(key, rule, series, fp, current, now, shown))
            # A series with no samples and no alert is forgotten, unless its silence is what the
            # rule watches (on_no_data: alert).
            silence_matters = rule.on_no_data == "alert" and rule.detector is None
            if not series.keep and not series.samples and key not in self._open and not silence_matters:
                del self._series[key]
        return out

    def _resolve(
        self,
        key: tuple[str, str],
        rule: Rule,
        series: Series,
        fp: str,
        alert: OpenAlert,
        now: datetime,
        value: float | None,
    ) -> AlertEvent:
        alert.state = "resolved"
        del self._open[key]
        return self._transition(rule, series.labels, fp, alert, now, value)

    @staticmethod
    def _transition(
        rule: Rule, labels: dict[str, str], fp: str, alert: OpenAlert, now: datetime, value: float | None
    ) -> AlertEvent:
        annotations = dict(rule.annotations)
        if rule.detector is not None:
            default = f"{rule.detector.kind} detected a change in {rule.metric} within the last {rule.window_s:g}s"
            annotations.setdefault("detector", rule.detector.kind)
        else:
            agg = f"share({rule.metric} > {rule.share_above:g})" if rule.share_above is not None else rule.aggregation
            agg = agg if rule.share_above is not None else f"{agg}({rule.metric})"
            vs = " relative to its baseline" if rule.baseline is not None else ""
            default = f"{agg} over {rule.window_s:g}s{vs} {rule.comparator} {rule.threshold:g}"
        annotations["summary"] = rule.annotations.get("summary", default)
        event = AlertEvent(
            ts=now,
            alert_id=alert.alert_id,
            fingerprint=fp,
            rule=rule.name,
            state=alert.state,  # type: ignore[arg-type]
            severity=rule.severity,
            labels={"alertname": rule.name, **rule.labels, **labels},
            annotations=annotations,
            value=value,
            threshold=rule.threshold,
            action=rule.action,
            started_at=alert.started_at,
        )
        alert.event_id = event.event_id
        return event
