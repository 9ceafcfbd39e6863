"""The alert lifecycle in the evaluator: for, hysteresis, dedup, detectors, shares, baselines."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from atalaia.drift.base import DriftDetector
from atalaia.events import MetricEvent
from monitors import rules as rules_module
from monitors.evaluator import RuleEvaluator
from monitors.rules import Rule, RuleError, load_rules, parse_rules

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def metric(value: float | None, t: datetime, name: str = "latency_ms", version: str = "v1") -> MetricEvent:
    return MetricEvent(
        source_event_id=uuid.uuid4(),
        source_ts=t,
        service="svc",
        model_version=version,
        name=name,
        value=value,
        error=None if value is not None else "failed",
    )


def rule(**kw: Any) -> Rule:
    base: dict[str, Any] = {"name": "r", "metric": "latency_ms", "window": 10}
    return Rule.model_validate(base | kw)


def run(ev: RuleEvaluator, values: list[float], start: float = 0.0, step: float = 1.0) -> list[str]:
    """Feed one value per step and evaluate after each; return the transitions' states."""
    states: list[str] = []
    for i, v in enumerate(values):
        t = at(start + i * step)
        ev.observe(metric(v, t))
        states += [a.state for a in ev.evaluate(t)]
    return states


def test_fires_after_for_and_resolves_with_the_same_alert_id() -> None:
    ev = RuleEvaluator([rule(threshold=100, **{"for": 5}, window=2, on_no_data="resolve")])
    out = []
    for i in range(8):
        ev.observe(metric(500.0, at(i)))
        out += ev.evaluate(at(i))
    assert [a.state for a in out] == ["pending", "firing"]
    assert (out[1].ts - out[0].ts) == timedelta(seconds=5)
    resolved = ev.evaluate(at(20))  # no samples in the window any more
    assert [a.state for a in resolved] == ["resolved"]
    assert len({a.alert_id for a in [*out, *resolved]}) == 1


def test_deduplicates_by_rule_and_labels() -> None:
    ev = RuleEvaluator([rule(threshold=100)])
    for i in range(5):
        ev.observe(metric(500.0, at(i)))
        ev.observe(metric(500.0, at(i), version="v2"))
    first = ev.evaluate(at(5))
    assert sorted((a.labels["model_version"], a.state) for a in first) == [
        ("v1", "firing"),
        ("v1", "pending"),
        ("v2", "firing"),
        ("v2", "pending"),
    ]
    for i in range(5, 10):  # still breached: the same two alerts stay open, nothing new
        ev.observe(metric(500.0, at(i)))
        assert ev.evaluate(at(i)) == []
    assert len(ev.open_alerts()) == 2
    assert len({a.fingerprint for a in first}) == 2


def test_hysteresis_keeps_a_value_hovering_at_the_threshold_firing() -> None:
    hovering = [1010.0, 990.0] * 10  # mean of the last sample only (window 1 s) flips every second
    plain = RuleEvaluator([rule(threshold=1000, window=0.5)])
    assert run(plain, hovering).count("resolved") >= 5  # without hysteresis it flaps

    ev = RuleEvaluator([rule(threshold=1000, resolve_threshold=900, window=0.5)])
    assert run(ev, hovering) == ["pending", "firing"]
    assert run(ev, [850.0], start=30) == ["resolved"]


def test_resolve_for_needs_the_value_to_stay_clear() -> None:
    ev = RuleEvaluator([rule(threshold=100, window=0.5, resolve_for=5)])
    assert run(ev, [500.0]) == ["pending", "firing"]
    assert run(ev, [1.0, 1.0, 1.0, 500.0], start=1) == []  # clear 3 s, then breached again: stays firing
    assert run(ev, [1.0] * 5, start=5) == []  # clear since t=5: 4 s so far
    assert run(ev, [1.0], start=10) == ["resolved"]  # 5 s clear


def test_pending_between_thresholds_stays_pending_and_fires_only_when_breached() -> None:
    ev = RuleEvaluator([rule(threshold=100, resolve_threshold=50, window=0.5, **{"for": 2})])
    assert run(ev, [200.0, 70.0, 70.0]) == ["pending"]  # between 50 and 100 after 2 s: not firing
    assert run(ev, [200.0], start=3) == ["firing"]
    assert run(ev, [10.0], start=4) == ["resolved"]


def test_a_pending_alert_that_clears_resolves_at_once() -> None:
    ev = RuleEvaluator([rule(threshold=100, window=0.5, resolve_for=60, **{"for": 30})])
    assert run(ev, [200.0, 1.0]) == ["pending", "resolved"]


def test_action_retrain_travels_on_every_transition() -> None:
    ev = RuleEvaluator([rule(threshold=1, action="retrain", window=0.5, on_no_data="resolve")])
    out = []
    ev.observe(metric(5.0, at(0)))
    out += ev.evaluate(at(0))
    out += ev.evaluate(at(5))
    assert [(a.state, a.action) for a in out] == [(s, "retrain") for s in ("pending", "firing", "resolved")]


def test_share_above_a_value() -> None:
    r = rule(metric="toxicity_response", aggregation="share", share_above=0.5, threshold=0.2, window=100)
    ev = RuleEvaluator([r])
    for i, v in enumerate([0.1, 0.9, 0.1, 0.1, 0.1]):
        ev.observe(metric(v, at(i), name="toxicity_response"))
    assert ev.evaluate(at(5)) == []  # 1 in 5 = 0.2, not above 0.2
    ev.observe(metric(0.8, at(5), name="toxicity_response"))
    out = ev.evaluate(at(5))
    assert [a.state for a in out] == ["pending", "firing"] and out[0].value == pytest.approx(2 / 6)


def test_error_share_counts_metrics_that_failed() -> None:
    ev = RuleEvaluator([rule(metric="perplexity", aggregation="error_share", threshold=0.3, window=100)])
    plain = RuleEvaluator([rule(metric="perplexity", threshold=1e9, window=100)])
    for i, v in enumerate([5.0, None, 6.0, None]):
        for e in (ev, plain):
            e.observe(metric(v, at(i), name="perplexity"))
    out = ev.evaluate(at(4))
    assert [a.state for a in out] == ["pending", "firing"] and out[0].value == pytest.approx(0.5)
    assert plain.evaluate(at(4)) == []  # other aggregations ignore failed metrics


def test_count_and_rate_count_failed_metrics_as_arrivals() -> None:
    # A service whose calls all fail (latency_ms error rows) has not stopped sending.
    stopped = RuleEvaluator([rule(metric="latency_ms", aggregation="count", comparator="<", threshold=1, window=100)])
    rate = RuleEvaluator([rule(metric="latency_ms", aggregation="rate", comparator=">", threshold=0.03, window=100)])
    p95 = RuleEvaluator([rule(metric="latency_ms", aggregation="p95", threshold=1e9, window=100)])
    for i in range(4):
        for e in (stopped, rate, p95):
            e.observe(metric(None, at(i), name="latency_ms"))
    assert stopped.evaluate(at(4)) == []  # 4 arrivals: not < 1
    assert [a.state for a in rate.evaluate(at(4))] == ["pending", "firing"]  # 4 / 100 s > 0.03
    assert p95.evaluate(at(4)) == []  # percentiles read values only


def test_baseline_is_per_model_version_and_relative() -> None:
    r = rule(metric="rougeL", comparator="<", threshold=-0.15, baseline={"samples": 5}, min_samples=3, window=100)
    ev = RuleEvaluator([r])
    for i in range(5):
        ev.observe(metric(0.5, at(i), name="rougeL", version="v1"))
        ev.observe(metric(0.2, at(i), name="rougeL", version="v2"))  # v2 is worse, but stable: its own baseline
    assert ev.evaluate(at(5)) == []
    for i in range(5, 200):
        ev.observe(metric(0.3, at(i), name="rougeL", version="v1"))  # -40 % from 0.5
    out = ev.evaluate(at(200))
    assert {(a.labels["model_version"], a.state) for a in out} == {("v1", "pending"), ("v1", "firing")}
    assert out[0].value == pytest.approx(-0.4)


def test_baseline_not_ready_does_not_fire_and_can_be_seeded() -> None:
    r = rule(metric="rougeL", comparator="<", threshold=-0.15, baseline={"samples": 50}, window=100)
    ev = RuleEvaluator([r])
    for i in range(10):
        ev.observe(metric(0.1, at(i), name="rougeL"))
    assert ev.evaluate(at(10)) == []  # 10 of 50 baseline samples: not evaluated yet
    assert not ev.seed_baseline("r", {"model_version": "v1"}, [0.5] * 10)  # too few
    assert ev.seed_baseline("r", {"model_version": "v1"}, [0.5] * 60)
    assert [a.state for a in ev.evaluate(at(10))] == ["pending", "firing"]


# -- detector rules ----------------------------------------------------------------------------
class StepDetector(DriftDetector):
    """A fake: signals when a value is at least ``jump`` away from the first one seen."""

    def __init__(self, jump: float = 10.0) -> None:
        self.jump = jump
        self.reset()

    def update(self, x: Any) -> None:
        self.first = x if self.first is None else self.first
        self._hit = abs(x - self.first) >= self.jump

    @property
    def drift_detected(self) -> bool:
        return self._hit

    def reset(self) -> None:
        self.first: float | None = None
        self._hit = False


@pytest.fixture
def fake_detectors() -> Iterator[None]:
    def factory(kind: str, **params: Any) -> DriftDetector:
        if kind != "step":
            raise ValueError(f"unknown drift detector kind {kind!r}; use one of ['step']")
        unknown = set(params) - {"jump"}
        if unknown:
            raise ValueError(f"drift detector 'step': unknown parameter {sorted(unknown)[0]!r}")
        return StepDetector(**params)

    rules_module.set_detector_factory(factory)
    yield
    rules_module.set_detector_factory(None)


@pytest.mark.usefixtures("fake_detectors")
def test_detector_rule_fires_on_a_change_and_resolves_after_the_window() -> None:
    r = rule(detector={"kind": "step", "jump": 10}, window=30)
    ev = RuleEvaluator([r])
    assert run(ev, [100.0, 101.0, 99.0]) == []
    assert run(ev, [150.0], start=3) == ["pending", "firing"]
    out = ev.evaluate(at(20))
    assert out == []  # the change is still within the window
    assert [a.state for a in ev.evaluate(at(34))] == ["resolved"]
    assert ev.rules["r"].threshold is None


@pytest.mark.usefixtures("fake_detectors")
@pytest.mark.parametrize(
    ("detector", "key"),
    [({"kind": "cusum"}, "detector.kind"), ({"kind": "step", "speed": 3}, "detector.speed")],
)
def test_detector_errors_name_rule_and_key(detector: dict[str, Any], key: str) -> None:
    with pytest.raises(RuleError) as info:
        parse_rules({"rules": [{"name": "d", "metric": "m", "detector": detector}]}, "rules.yaml")
    assert f"rules.yaml: rule 'd' (#1), key '{key}'" in str(info.value)


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ({"detector": {"kind": "page_hinkley"}, "threshold": 3}, "threshold"),
        ({"threshold": 3, "comparator": ">", "resolve_threshold": 5}, "resolve_threshold"),
        ({"threshold": 3, "comparator": "<", "resolve_threshold": 1}, "resolve_threshold"),
        ({"threshold": 3, "aggregation": "share"}, "share_above"),
        ({"threshold": 3, "share_above": 0.5}, "share_above"),
        ({"threshold": 3, "renotify": -1}, "renotify"),
        ({"threshold": 3, "baseline": {"samples": 1}}, "baseline.samples"),
        ({"detector": {"kind": "page_hinkley", "threshold": -1}}, "detector.threshold"),
        ({"detector": {"kind": "adwin", "speed": 3}}, "detector.speed"),
    ],
)
def test_rule_key_errors(extra: dict[str, Any], key: str) -> None:
    with pytest.raises(RuleError) as info:
        parse_rules({"rules": [{"name": "a", "metric": "m", **extra}]})
    assert f"rule 'a' (#1), key '{key}'" in str(info.value)


def test_page_hinkley_rule_catches_a_latency_step() -> None:
    """The real detector (atalaia.drift.make_detector) behind a rule: quiet, then a step fires it."""
    import random

    r = rule(detector={"kind": "page_hinkley", "mode": "up"}, window=60)
    ev = RuleEvaluator([r])
    rng = random.Random(7)
    quiet = [rng.gauss(800, 40) for _ in range(1000)]
    assert run(ev, quiet, step=0.1) == []
    fired = run(ev, [rng.gauss(1200, 40) for _ in range(200)], start=100, step=0.1)
    assert fired[:2] == ["pending", "firing"]


def test_default_rules_cover_the_issue() -> None:
    rules = {r.name: r for r in load_rules(None)}
    metrics = {r.metric for r in rules.values()}
    assert {"latency_ms", "cost", "toxicity_response", "rougeL", "perplexity", "embedding_drift_flag"} <= metrics
    assert any(r.aggregation == "error_share" for r in rules.values())
    assert any(r.detector is not None and r.detector.kind == "page_hinkley" for r in rules.values())
    assert rules["rouge_l_below_baseline"].baseline is not None
    assert rules["rouge_l_below_baseline"].action == "retrain"


def test_default_rules_trigger_retraining_without_reference_answers() -> None:
    """Signals production traffic has (no reference answer needed) carry ``action: retrain``."""
    rules = {r.name: r for r in load_rules(None)}
    retrain = {r.metric for r in rules.values() if r.action == "retrain"}
    assert {"feedback_negative", "similarity_context", "embedding_drift_flag", "toxicity_response"} <= retrain
    assert rules["groundedness_below_baseline"].baseline is not None
