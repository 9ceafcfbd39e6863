"""Retraining triggers that production traffic has: no reference answers anywhere.

A simulated production stream (the demo's shape: a stationary hour, then drifted traffic) carries
only what production has: users' feedback (``feedback_negative``), the answer's similarity to the
retrieved passages (``similarity_context``), toxicity of responses and the embedding drift test,
and never a ``rougeL`` score. With the default rules, alerts with ``action: retrain`` must fire, and
the scheduler must turn them into a retrain job: the loop closes without references. (The demo
itself still sends references, to measure recovery; this shows that its trigger does not need them.)
"""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from atalaia.events import AlertEvent, MetricEvent
from monitors.evaluator import RuleEvaluator
from monitors.rules import load_rules
from retrain.scheduler import request_retrain, wants_retrain

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
VERSION = "smollm2@base"
#: Metrics that need a reference answer, which production traffic rarely has.
NEEDS_REFERENCE = {"rougeL", "rouge1", "rouge2", "bleu", "meteor", "similarity_reference", "exact_match"}


def _metric(name: str, value: float, at: datetime) -> MetricEvent:
    return MetricEvent(
        source_event_id=uuid.uuid4(),
        source_ts=at,
        service="regulations-assistant",
        model_version=VERSION,
        name=name,
        value=value,
    )


def _request(rng: random.Random, at: datetime, drifted: bool) -> list[MetricEvent]:
    """The reference-free metrics of one request (and, for some, the user's feedback)."""
    out = [
        _metric("similarity_context", rng.gauss(0.42 if drifted else 0.62, 0.05), at),
        _metric("toxicity_response", abs(rng.gauss(0.01, 0.005)), at),
        _metric("latency_ms", rng.gauss(900, 50), at),
    ]
    if rng.random() < 0.5:  # half the users rate or correct the answer
        negative = rng.random() < (0.55 if drifted else 0.05)
        out.append(_metric("feedback_negative", 1.0 if negative else 0.0, at))
    return out


def _drift_tests(at: datetime, drifted: bool) -> list[MetricEvent]:
    return [_metric("embedding_drift_flag", 1.0 if drifted else 0.0, at)]


class _Jobs:
    def __init__(self) -> None:
        self.jobs: list[dict[str, Any]] = []

    def add_job(self, func: str, trigger: str, **kw: Any) -> None:
        self.jobs.append({"func": func, "trigger": trigger, **kw})


def test_default_rules_have_retrain_triggers_that_need_no_reference() -> None:
    retrain_rules = [r for r in load_rules(None) if r.action == "retrain"]
    without = {r.name for r in retrain_rules if r.metric not in NEEDS_REFERENCE}
    assert {
        "negative_feedback_share_high",
        "groundedness_below_baseline",
        "embedding_drift",
        "toxicity_share_high",
    } <= without


def test_a_drifted_stream_without_references_triggers_a_retrain() -> None:
    rng = random.Random(11)
    evaluator = RuleEvaluator(load_rules(None))
    fired: dict[str, AlertEvent] = {}
    now = T0
    # One request every 5 s: an hour as usual, then 40 minutes of drifted traffic.
    for i in range(int(100 * 60 / 5)):
        now = T0 + timedelta(seconds=5 * i)
        drifted = i >= 12 * 60
        for metric in _request(rng, now, drifted):
            evaluator.observe(metric)
        if i % 6 == 0:
            for metric in _drift_tests(now, drifted):
                evaluator.observe(metric)
            for alert in evaluator.evaluate(now):
                assert alert.rule not in fired or alert.state != "firing"
                if alert.state == "firing":
                    fired[alert.rule] = alert
                    assert not drifted or alert.ts >= T0 + timedelta(hours=1)
        if not drifted:
            assert not fired, f"false alarm before the drift: {sorted(fired)}"
    retrain = {name: a for name, a in fired.items() if a.action == "retrain"}
    assert {"negative_feedback_share_high", "groundedness_below_baseline", "embedding_drift"} <= set(retrain), fired
    assert not {a.rule for a in fired.values()} & {"rouge_l_below_baseline", "rouge_l_change"}

    # The scheduler acts on each: a retrain job is stored.
    jobs = _Jobs()
    for alert in retrain.values():
        alert_now = alert.model_copy(update={"ts": datetime.now(UTC)})
        assert wants_retrain(alert_now, 3600)
        request_retrain(jobs, f"alert:{alert.rule}")
    triggers = {j["kwargs"]["trigger"] for j in jobs.jobs}
    assert triggers >= {"alert:negative_feedback_share_high", "alert:embedding_drift"}
    assert all(j["func"] == "retrain.jobs:alert_retrain" for j in jobs.jobs)
