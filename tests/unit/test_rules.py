from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from atalaia.events import MetricEvent
from monitors.evaluator import RuleEvaluator
from monitors.rules import Rule, RuleError, load_rules, parse_rules

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def metric(value: float, at: datetime, name: str = "latency_ms", version: str = "v1") -> MetricEvent:
    return MetricEvent(
        source_event_id=uuid.uuid4(), source_ts=at, service="svc", model_version=version, name=name, value=value
    )


def test_default_rules_load() -> None:
    names = [r.name for r in load_rules(None)]
    assert "latency_p95_high" in names


@pytest.mark.parametrize(
    ("rule", "needle"),
    [
        ({"name": "a", "metric": "m", "threshold": 1, "aggregation": "p42"}, "key 'aggregation'"),
        ({"name": "a", "metric": "m", "threshold": 1, "window": -5}, "key 'window'"),
        ({"name": "a", "metric": "m"}, "key 'threshold'"),
        ({"name": "a", "metric": "m", "threshold": 1, "filter": {"region": "x"}}, "unknown filter key"),
        ({"name": "a", "metric": "m", "threshold": 1, "colour": "red"}, "key 'colour'"),
    ],
)
def test_rule_errors_name_rule_and_key(rule: dict, needle: str) -> None:
    with pytest.raises(RuleError) as info:
        parse_rules({"rules": [rule]}, "rules.yaml")
    assert "rule 'a' (#1)" in str(info.value) and needle in str(info.value)


def test_duplicate_names_and_bad_files(tmp_path: Path) -> None:
    with pytest.raises(RuleError, match="duplicate"):
        parse_rules({"rules": [{"name": "a", "metric": "m", "threshold": 1}] * 2})
    bad = tmp_path / "r.yaml"
    bad.write_text("rules: [")
    with pytest.raises(RuleError, match="not valid YAML"):
        load_rules(bad)
    with pytest.raises(RuleError, match="not found"):
        load_rules(tmp_path / "missing.yaml")


def test_lifecycle_pending_firing_resolved_with_for_duration() -> None:
    rule = Rule.model_validate(
        {
            "name": "slow",
            "metric": "latency_ms",
            "aggregation": "p95",
            "window": 60,
            "threshold": 1000,
            "for": 30,
            "min_samples": 3,
            "on_no_data": "resolve",  # the default, keep, is tested in test_no_data_*
        }
    )
    ev = RuleEvaluator([rule])
    for i in range(3):
        ev.observe(metric(2000.0, T0 + timedelta(seconds=i)))
    states = [a.state for a in ev.evaluate(T0 + timedelta(seconds=2))]
    assert states == ["pending"]
    assert ev.evaluate(T0 + timedelta(seconds=20)) == []  # holds, but not yet for 30 s
    fired = ev.evaluate(T0 + timedelta(seconds=32))
    assert [a.state for a in fired] == ["firing"]
    assert fired[0].labels == {"alertname": "slow", "model_version": "v1"}
    assert ev.evaluate(T0 + timedelta(seconds=40)) == []  # deduplicated: no repeat while firing
    resolved = ev.evaluate(T0 + timedelta(seconds=70))  # samples left the window
    assert [a.state for a in resolved] == ["resolved"]
    assert resolved[0].alert_id == fired[0].alert_id


def test_pending_that_recovers_resolves_without_firing() -> None:
    rule = Rule.model_validate({"name": "r", "metric": "latency_ms", "aggregation": "mean", "threshold": 10, "for": 60})
    ev = RuleEvaluator([rule])
    ev.observe(metric(100.0, T0))
    assert [a.state for a in ev.evaluate(T0)] == ["pending"]
    for i in range(20):
        ev.observe(metric(1.0, T0 + timedelta(seconds=1 + i)))
    assert [a.state for a in ev.evaluate(T0 + timedelta(seconds=21))] == ["resolved"]


def test_groups_and_filters_are_separate_series() -> None:
    rule = Rule.model_validate(
        {"name": "r", "metric": "latency_ms", "aggregation": "max", "threshold": 10, "filter": {"service": "svc"}}
    )
    ev = RuleEvaluator([rule])
    ev.observe(metric(100.0, T0, version="v1"))
    ev.observe(metric(1.0, T0, version="v2"))
    ev.observe(metric(5.0, T0, name="cost"))
    alerts = ev.evaluate(T0)
    assert {(a.labels["model_version"], a.state) for a in alerts} == {("v1", "pending"), ("v1", "firing")}


def test_min_samples_and_errors_are_ignored() -> None:
    rule = Rule.model_validate({"name": "r", "metric": "latency_ms", "threshold": 10, "min_samples": 2})
    ev = RuleEvaluator([rule])
    ev.observe(metric(100.0, T0))
    ev.observe(
        MetricEvent(
            source_event_id=uuid.uuid4(),
            source_ts=T0,
            service="svc",
            model_version="v1",
            name="latency_ms",
            value=None,
            error="boom",
        )
    )
    assert ev.evaluate(T0) == []


def test_restore_reopens_without_new_transition() -> None:
    rule = Rule.model_validate({"name": "r", "metric": "latency_ms", "threshold": 10, "on_no_data": "resolve"})
    ev = RuleEvaluator([rule])
    aid = uuid.uuid4()
    ev.restore("r", {"model_version": "v1"}, aid, "firing", T0)
    ev.observe(metric(100.0, T0 + timedelta(seconds=1)))
    assert ev.evaluate(T0 + timedelta(seconds=1)) == []
    out = ev.evaluate(T0 + timedelta(seconds=120))
    assert [(a.state, a.alert_id) for a in out] == [("resolved", aid)]


# -- no data ---------------------------------------------------------------------------------------
def _fire(on_no_data: str | None) -> tuple[RuleEvaluator, list[str]]:
    spec = {"name": "r", "metric": "latency_ms", "window": 60, "threshold": 10, "for": 5}
    if on_no_data is not None:
        spec["on_no_data"] = on_no_data
    ev = RuleEvaluator([Rule.model_validate(spec)])
    states: list[str] = []
    for i in range(7):
        ev.observe(metric(100.0, T0 + timedelta(seconds=i)))
        states += [a.state for a in ev.evaluate(T0 + timedelta(seconds=i))]
    assert states == ["pending", "firing"]
    return ev, states


def test_no_data_keeps_a_firing_alert_by_default() -> None:
    """A stalled pipeline (no samples) must not clear the alerts that should page someone."""
    ev, _ = _fire(None)
    for minutes in (2, 10, 60):
        assert ev.evaluate(T0 + timedelta(minutes=minutes)) == []
    assert [a.state for a in ev.open_alerts().values()] == ["firing"]
    ev.observe(metric(1.0, T0 + timedelta(minutes=61)))  # data again, and safe: now it resolves
    assert [a.state for a in ev.evaluate(T0 + timedelta(minutes=61))] == ["resolved"]


def test_keep_resolves_an_idle_series_while_the_rule_gets_data_elsewhere() -> None:
    """A replaced model version stops getting samples while the new one does: not a stall."""
    ev, _ = _fire(None)  # firing on v1
    for i in range(100, 170, 5):
        ev.observe(metric(1.0, T0 + timedelta(seconds=i), version="v2"))
        out = ev.evaluate(T0 + timedelta(seconds=i))
        if out:
            break
    assert [(a.state, a.labels["model_version"]) for a in out] == [("resolved", "v1")]


def test_keep_holds_a_series_that_thins_out_on_its_own() -> None:
    """Users pausing (fewer than min_samples left in the window, the rule's newest sample its own)
    is no recovery: the alert stays until values come back or another series flows."""
    spec = {"name": "r", "metric": "latency_ms", "window": 60, "threshold": 10, "for": 5, "min_samples": 5}
    ev = RuleEvaluator([Rule.model_validate(spec)])
    states: list[str] = []
    for i in range(12):
        ev.observe(metric(100.0, T0 + timedelta(seconds=i)))
        states += [a.state for a in ev.evaluate(T0 + timedelta(seconds=i))]
    assert states == ["pending", "firing"]
    ev.observe(metric(100.0, T0 + timedelta(seconds=50)))
    # From 72 s fewer than 5 samples are left in the window, the newest (50 s) in it until 110 s.
    for seconds in (72, 100, 109):
        assert ev.evaluate(T0 + timedelta(seconds=seconds)) == []
    assert [a.state for a in ev.open_alerts().values()] == ["firing"]


def test_no_data_resolves_when_the_rule_says_so() -> None:
    ev, _ = _fire("resolve")
    assert [a.state for a in ev.evaluate(T0 + timedelta(minutes=2))] == ["resolved"]


def test_on_no_data_alert_pages_on_a_service_that_was_sending_and_stopped() -> None:
    rule = Rule.model_validate(
        {
            "name": "silent",
            "metric": "latency_ms",
            "aggregation": "count",
            "window": 600,  # the minimum quiet time: a shorter pause pages no one
            "comparator": "<",
            "threshold": 1,
            "for": 60,
            "on_no_data": "alert",
            "group_by": ["service"],
        }
    )
    ev = RuleEvaluator([rule])
    ev.observe(metric(5.0, T0))
    assert ev.evaluate(T0) == []
    assert ev.evaluate(T0 + timedelta(seconds=599)) == []  # quiet, but not for long enough
    assert [a.state for a in ev.evaluate(T0 + timedelta(seconds=601))] == ["pending"]
    assert [a.state for a in ev.evaluate(T0 + timedelta(seconds=662))] == ["firing"]
    ev.observe(metric(5.0, T0 + timedelta(seconds=700)))  # traffic is back
    assert [a.state for a in ev.evaluate(T0 + timedelta(seconds=700))] == ["resolved"]


def test_on_no_data_is_checked() -> None:
    with pytest.raises(RuleError, match="on_no_data"):
        parse_rules({"rules": [{"name": "a", "metric": "m", "threshold": 1, "on_no_data": "ignore"}]})
