"""Pipeline health: the worker and the monitor report consumer lag and the age of their last
commit; the built-in rules page on consumer lag and event -> row freshness like any rule."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import create_engine

from atalaia.kafka.lag import ConsumerHealth, GroupLag
from atalaia.settings import Settings
from consumers.health import CommitSensor
from monitors.evaluator import RuleEvaluator
from monitors.pipeline_health import FRESHNESS, LAG, PipelineHealth, lag_metrics
from monitors.rules import load_rules
from monitors.web import create_app

T0 = datetime(2026, 1, 1, tzinfo=UTC)


class _Probe:
    """A lag probe answering what the test says; raises while ``down``."""

    def __init__(self, group: str, lag: int = 0, oldest: float | None = None) -> None:
        self.group, self.lag, self.oldest, self.down = group, lag, oldest, False

    def measure(self) -> GroupLag:
        if self.down:
            raise ConnectionError("broker away")
        return GroupLag(self.group, self.lag, {"t/0": self.lag}, self.oldest)

    def close(self) -> None:
        pass


def _health(group: str = "g", **probe: Any) -> ConsumerHealth:
    health = ConsumerHealth(Settings(home="/tmp/atalaia-unit"), group, ["t"], every_s=60)
    health.probe = _Probe(group, **probe)  # type: ignore[assignment]
    return health


def _feed(ev: RuleEvaluator, group: str, lag: int, oldest: float | None, start: int, stop: int) -> list[str]:
    """Sample every 15 s from ``start`` to ``stop`` seconds after T0; the transitions' states."""
    states = []
    for s in range(start, stop, 15):
        sample = GroupLag(group, lag, {}, oldest, measured_at=(T0 + timedelta(seconds=s)).timestamp())
        for metric in lag_metrics(sample):
            ev.observe(metric)
        states += [f"{a.rule}:{a.state}:{a.labels.get('service')}" for a in ev.evaluate(T0 + timedelta(seconds=s))]
    return states


def test_default_rules_page_on_a_lagging_worker_and_resolve_when_it_catches_up() -> None:
    rules = [r for r in load_rules(None) if r.metric in (LAG, FRESHNESS)]
    assert {r.name for r in rules} == {"consumer_lag_high", "event_freshness_high"}
    assert all(r.severity == "critical" and r.group_by == ["service"] for r in rules)
    ev = RuleEvaluator(rules)
    assert _feed(ev, "atalaia-worker", 0, None, 0, 300) == []  # a healthy pipeline
    behind = _feed(ev, "atalaia-worker", 50_000, 900.0, 300, 600)
    assert behind[:2] == ["consumer_lag_high:pending:atalaia-worker", "event_freshness_high:pending:atalaia-worker"]
    assert (
        "consumer_lag_high:firing:atalaia-worker" in behind and "event_freshness_high:firing:atalaia-worker" in behind
    )
    caught_up = _feed(ev, "atalaia-worker", 0, None, 600, 900)
    assert sorted(caught_up) == [
        "consumer_lag_high:resolved:atalaia-worker",
        "event_freshness_high:resolved:atalaia-worker",
    ]


def test_a_short_backlog_pages_no_one() -> None:
    ev = RuleEvaluator([r for r in load_rules(None) if r.metric in (LAG, FRESHNESS)])
    _feed(ev, "w", 0, None, 0, 150)
    states = _feed(ev, "w", 50_000, 400.0, 150, 210)  # a replay after an outage, drained in a minute
    states += _feed(ev, "w", 0, None, 210, 600)
    assert not any(":firing:" in s for s in states)


def test_no_measurement_keeps_the_alert_firing() -> None:
    """The broker away (nothing measured) is no reason to resolve: on_no_data keep."""
    ev = RuleEvaluator([r for r in load_rules(None) if r.name == "consumer_lag_high"])
    assert "consumer_lag_high:firing:w" in _feed(ev, "w", 50_000, None, 0, 300)
    assert ev.evaluate(T0 + timedelta(seconds=900)) == []


def test_freshness_is_zero_without_lag_and_unknown_when_unread() -> None:
    assert [(m.name, m.value) for m in lag_metrics(GroupLag("w", 0))] == [(LAG, 0.0), (FRESHNESS, 0.0)]
    assert [m.name for m in lag_metrics(GroupLag("w", 5, {}, None))] == [LAG]
    assert [m.value for m in lag_metrics(GroupLag("w", 5, {}, 42.0))] == [5.0, 42.0]


def test_consumer_health_reports_lag_and_last_commit_and_survives_a_broker_outage() -> None:
    health = _health("atalaia-worker", lag=7, oldest=12.5)
    assert health.as_dict()["lag"] is None and health.last_commit_age_s() is None
    health.sample()
    health.committed(at=time.time() - 30)
    report = health.as_dict()
    assert report["lag"] == 7 and report["oldest_waiting_age_s"] == 12.5 and report["error"] is None
    assert 29 < report["last_commit_age_s"] < 60
    text = health.prometheus()
    assert 'atalaia_consumer_lag{group="atalaia-worker"} 7.0' in text
    assert 'atalaia_consumer_oldest_waiting_age_seconds{group="atalaia-worker"} 12.5' in text
    assert 'atalaia_consumer_lag_probe_ok{group="atalaia-worker"} 1.0' in text
    assert "atalaia_consumer_last_commit_age_seconds{" in text
    health.probe.down = True  # type: ignore[attr-defined]
    assert health.sample() is None
    report = health.as_dict()
    assert report["error"].startswith("ConnectionError") and report["lag"] == 7  # the last figure, dated
    assert 'atalaia_consumer_lag_probe_ok{group="atalaia-worker"} 0.0' in health.prometheus()


def test_the_commit_sensor_counts_only_attempts_that_committed() -> None:
    health = _health()

    consumer = SimpleNamespace(_committed_offset={"t/0": 5, "t/1": None})
    sensor = CommitSensor(health)
    state = sensor.on_commit_initiated(consumer)
    sensor.on_commit_completed(consumer, state)  # nothing to commit (faust tries every second)
    assert health.last_commit_age_s() is None
    state = sensor.on_commit_initiated(consumer)
    consumer._committed_offset = {"t/0": 5, "t/1": 3}  # the first commit of a partition counts too
    sensor.on_commit_completed(consumer, state)
    age = health.last_commit_age_s()
    assert age is not None and age < 5


def test_the_monitor_serves_both_groups_on_healthz_and_metrics(tmp_path: Any) -> None:
    settings = Settings(home=tmp_path, worker_id="wk", monitor_group="mon")
    stats_commit = time.time() - 3
    pipeline = PipelineHealth(settings, last_commit=lambda: stats_commit)
    pipeline.worker.probe = _Probe("wk", lag=40, oldest=75.0)  # type: ignore[assignment]
    pipeline.monitor.probe = _Probe("mon", lag=0)  # type: ignore[assignment]
    pipeline.worker.sample()
    pipeline.monitor.sample()
    assert {(m.service, m.name, m.value) for m in pipeline.drain()} == {
        ("wk", LAG, 40.0),
        ("wk", FRESHNESS, 75.0),
        ("mon", LAG, 0.0),
        ("mon", FRESHNESS, 0.0),
    }
    client = TestClient(create_app(settings, create_engine("sqlite://"), pipeline=pipeline))
    body = client.get("/healthz").json()
    assert body["worker"]["lag"] == 40 and body["worker"]["oldest_waiting_age_s"] == 75.0
    assert body["consumer"]["group"] == "mon" and body["consumer"]["lag"] == 0
    assert 2 < body["consumer"]["last_commit_age_s"] < 30
    text = client.get("/metrics").text
    assert 'atalaia_consumer_lag{group="wk"} 40.0' in text and 'atalaia_consumer_lag{group="mon"} 0.0' in text
    assert text.count("# TYPE atalaia_consumer_lag gauge") == 1
