"""Durable delivery on SQLite with fake receivers: queueing, silences, retries, order, re-notification."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, select

from atalaia.events import AlertEvent, MetricEvent
from atalaia.settings import Settings
from atalaia.storage import repository
from atalaia.storage import tables as t
from monitors.alerts import ack_alert
from monitors.evaluator import RuleEvaluator
from monitors.routing.alertmanager import alertmanager_alert
from monitors.routing.base import DeliveryError, Notification, Receiver
from monitors.routing.delivery import DeliveryWorker, enqueue, receivers_from_settings
from monitors.routing.slack import slack_payload
from monitors.routing.webhook import SIGNATURE_HEADER, sign, verify_signature, webhook_payload
from monitors.rules import Rule
from monitors.silences import create_silence, expire_silence

T0 = datetime(2026, 1, 1, tzinfo=UTC)


class FakeReceiver(Receiver):
    """Records what it is sent; ``down`` makes it fail like an unreachable receiver."""

    def __init__(self, name: str, refresh_s: float | None = None) -> None:
        self.name, self.refresh_s = name, refresh_s
        self.sent: list[Notification] = []
        self.down = False
        self.attempts = 0

    def send(self, notification: Notification) -> None:
        self.attempts += 1
        if self.down:
            raise DeliveryError("connection refused")
        self.sent.append(notification)

    def close(self) -> None:
        pass


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    eng = create_engine(f"sqlite:///{tmp_path / 'a.db'}")
    t.metadata.create_all(eng)
    return eng


RULE = Rule.model_validate(
    {
        "name": "slow",
        "metric": "latency_ms",
        "aggregation": "max",
        "window": 30,
        "threshold": 100,
        "renotify": 60,
        "on_no_data": "resolve",  # these tests resolve by letting the window empty
    }
)


class Harness:
    """An evaluator, a delivery worker and fake receivers over one database, on a fake clock."""

    def __init__(self, engine: Engine, tmp_path: Path, receivers: list[FakeReceiver], rule: Rule = RULE) -> None:
        self.engine, self.clock, self.receivers = engine, Clock(), receivers
        self.settings = Settings(home=tmp_path, alert_retry_initial_s=1, alert_retry_max_s=8, alert_renotify_s=3600)
        self.evaluator = RuleEvaluator([rule])
        self.worker = DeliveryWorker(engine, receivers, self.settings, {rule.name: rule}, clock=self.clock)
        self.stored: list[AlertEvent] = []

    def step(self, value: float | None, seconds: float = 1.0) -> list[str]:
        """Advance the clock, observe a value, store the transitions as the monitor does."""
        now = self.clock.advance(seconds)
        if value is not None:
            self.evaluator.observe(
                MetricEvent(
                    source_event_id=uuid.uuid4(),
                    source_ts=now,
                    service="svc",
                    model_version="v1",
                    name="latency_ms",
                    value=value,
                )
            )
        transitions = self.evaluator.evaluate(now)
        for alert in transitions:
            with self.engine.begin() as conn:
                if repository.store_alert(conn, alert):
                    enqueue(conn, alert, [r.name for r in self.receivers], now)
        self.stored += transitions
        return [a.state for a in transitions]

    def deliver(self) -> None:
        self.worker.requeue(self.clock.now)
        self.worker.run_once(self.clock.now)

    def deliveries(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            query = select(t.alert_deliveries).order_by(t.alert_deliveries.c.id)
            return [dict(r) for r in conn.execute(query).mappings()]


def test_firing_and_resolved_reach_every_receiver_once_pending_never(engine: Engine, tmp_path: Path) -> None:
    a, b = FakeReceiver("a"), FakeReceiver("b")
    h = Harness(engine, tmp_path, [a, b])
    assert h.step(500.0) == ["pending", "firing"]
    h.deliver()
    assert [n.alert.state for n in a.sent] == ["firing"] and [n.alert.state for n in b.sent] == ["firing"]
    for _ in range(5):  # still firing: deduplicated, nothing new
        h.step(500.0)
        h.deliver()
    assert len(a.sent) == 1
    assert h.step(None, 40) == ["resolved"]
    h.deliver()
    assert [n.alert.state for n in a.sent] == ["firing", "resolved"]
    assert all(d["status"] == "delivered" and d["attempts"] == 1 for d in h.deliveries())


def test_a_receiver_that_is_down_gets_the_alert_once_it_is_up_with_backoff(engine: Engine, tmp_path: Path) -> None:
    down, up = FakeReceiver("down"), FakeReceiver("up")
    down.down = True
    h = Harness(engine, tmp_path, [down, up])
    h.step(500.0)
    h.deliver()
    assert len(up.sent) == 1 and down.attempts == 1
    row = next(d for d in h.deliveries() if d["receiver"] == "down")
    assert row["status"] == "pending" and row["last_error"] == "connection refused"
    retries = []
    for _ in range(40):  # 20 s in 0.5 s ticks: attempts at +1, +2, +4, +8 (capped at 8) s
        h.clock.advance(0.5)
        before = down.attempts
        h.deliver()
        if down.attempts > before:
            retries.append((h.clock.now - T0).total_seconds())
    gaps = [b - a for a, b in zip([1.0, *retries], retries, strict=False)]
    assert gaps == [1.0, 2.0, 4.0, 8.0], retries  # exponential, capped; the evaluation never waited
    down.down = False
    h.clock.advance(8)
    h.deliver()
    assert [n.alert.state for n in down.sent] == ["firing"]
    assert all(d["status"] == "delivered" for d in h.deliveries())


def test_transitions_of_one_alert_reach_a_receiver_in_order(engine: Engine, tmp_path: Path) -> None:
    r = FakeReceiver("r")
    r.down = True
    h = Harness(engine, tmp_path, [r])
    h.step(500.0)
    h.deliver()
    h.step(None, 40)  # resolved while the firing notification is still pending
    r.down = False
    h.clock.advance(10)
    h.deliver()
    assert [n.alert.state for n in r.sent] == ["firing"]  # the resolution waited for its firing
    h.deliver()
    assert [n.alert.state for n in r.sent] == ["firing", "resolved"]


def test_renotifies_on_the_interval_only(engine: Engine, tmp_path: Path) -> None:
    r = FakeReceiver("r")
    h = Harness(engine, tmp_path, [r])
    h.step(500.0)
    h.deliver()
    sends = []
    for _ in range(200):  # 200 s firing, ticking every second
        h.step(500.0)
        h.deliver()
        sends = [(n.sent_at - T0).total_seconds() for n in r.sent]
    assert sends == [1.0, 61.0, 121.0, 181.0]
    assert [n.repeat for n in r.sent] == [False, True, True, True]
    assert [n.alert.state for n in r.sent] == ["firing"] * 4


def test_renotification_never_comes_sooner_than_the_interval_after_an_outage(engine: Engine, tmp_path: Path) -> None:
    r = FakeReceiver("r")
    h = Harness(engine, tmp_path, [r])
    h.step(500.0)
    h.deliver()
    h.step(500.0, 60)
    r.down = True
    h.deliver()  # the reminder fails ...
    h.step(500.0, 50)
    r.down = False
    h.clock.advance(8)
    h.deliver()  # ... and gets through 58 s late
    times = [(n.sent_at - T0).total_seconds() for n in r.sent]
    assert times == [1.0, 119.0]
    for _ in range(59):
        h.step(500.0)
        h.deliver()
    assert len(r.sent) == 2  # next reminder 60 s after the late one, not at t=121
    h.step(500.0)
    h.deliver()
    assert [(n.sent_at - T0).total_seconds() for n in r.sent] == [1.0, 119.0, 179.0]


def test_an_acknowledged_alert_is_not_renotified_except_to_refreshing_receivers(engine: Engine, tmp_path: Path) -> None:
    plain, am = FakeReceiver("plain"), FakeReceiver("am", refresh_s=30)
    h = Harness(engine, tmp_path, [plain, am])
    h.step(500.0)
    h.deliver()
    ack_alert(engine, str(h.stored[0].alert_id), "oncall", "looking")
    for _ in range(130):
        h.step(500.0)
        h.deliver()
    assert len(plain.sent) == 1
    assert len(am.sent) == 5  # refreshed every 30 s regardless of the acknowledgement
    h.step(None, 40)
    h.deliver()
    assert plain.sent[-1].alert.state == "resolved"  # the resolution still goes out


def test_renotify_zero_means_never(engine: Engine, tmp_path: Path) -> None:
    r = FakeReceiver("r")
    h = Harness(engine, tmp_path, [r], rule=RULE.model_copy(update={"renotify_s": 0.0}))
    for _ in range(100):
        h.step(500.0)
        h.deliver()
    assert len(r.sent) == 1


def test_a_silence_mutes_deliveries_but_not_evaluation_or_storage(engine: Engine, tmp_path: Path) -> None:
    r = FakeReceiver("r")
    h = Harness(engine, tmp_path, [r])
    silence = create_silence(
        engine, {"rule": "slow", "model_version": "v1"}, created_by="me", duration_s=100, now=h.clock.now
    )
    assert h.step(500.0) == ["pending", "firing"]  # evaluated
    with engine.connect() as conn:
        assert len(conn.execute(select(t.alerts)).all()) == 2  # stored
    for _ in range(50):
        h.step(500.0)
        h.deliver()
    assert r.sent == [] and h.deliveries() == []
    expire_silence(engine, silence.silence_id, now=h.clock.now)
    h.step(500.0)
    h.clock.advance(5)  # the re-queue pass runs every few seconds
    h.deliver()
    assert [n.alert.state for n in r.sent] == ["firing"]  # told once the silence is over


def test_a_silence_on_other_labels_does_not_mute(engine: Engine, tmp_path: Path) -> None:
    r = FakeReceiver("r")
    h = Harness(engine, tmp_path, [r])
    create_silence(engine, {"rule": "slow", "model_version": "v2"}, created_by="me", duration_s=100, now=h.clock.now)
    create_silence(engine, {"rule": "other"}, created_by="me", duration_s=100, now=h.clock.now)
    h.step(500.0)
    h.deliver()
    assert len(r.sent) == 1


def test_resolved_goes_only_to_receivers_that_heard_it_fire(engine: Engine, tmp_path: Path) -> None:
    r = FakeReceiver("r")
    h = Harness(engine, tmp_path, [r])
    silence = create_silence(engine, {"rule": "slow"}, created_by="me", duration_s=10, now=h.clock.now)
    h.step(500.0)
    h.step(None, 40)  # resolved after the silence ended, but r never heard it fire
    h.deliver()
    assert r.sent == []
    assert silence.state(h.clock.now) == "expired"


def test_late_requeue_after_restart_uses_the_rows(engine: Engine, tmp_path: Path) -> None:
    r = FakeReceiver("r")
    r.down = True
    h = Harness(engine, tmp_path, [r])
    h.step(500.0)
    h.deliver()
    # A new worker (a restarted monitor) over the same rows delivers what the old one could not.
    r2 = FakeReceiver("r")
    worker = DeliveryWorker(engine, [r2], h.settings, {RULE.name: RULE}, clock=h.clock)
    h.clock.advance(2)
    worker.run_once()
    assert [n.alert.state for n in r2.sent] == ["firing"]


def test_unknown_receivers_rows_do_not_block_others(engine: Engine, tmp_path: Path) -> None:
    old, new = FakeReceiver("old"), FakeReceiver("new")
    h = Harness(engine, tmp_path, [old, new])
    h.step(500.0)
    worker = DeliveryWorker(engine, [new], h.settings, {RULE.name: RULE}, clock=h.clock)  # "old" removed
    worker.run_once()
    assert len(new.sent) == 1 and old.sent == []


# -- payloads ----------------------------------------------------------------------------------
def _notification(state: str = "firing") -> Notification:
    alert = AlertEvent(
        ts=T0 + timedelta(minutes=5),
        alert_id=uuid.uuid4(),
        fingerprint="f",
        rule="slow",
        state=state,  # type: ignore[arg-type]
        severity="critical",
        labels={"alertname": "slow", "model_version": "m@1", "team-name": "sre"},
        annotations={"summary": "p95 high"},
        value=1234.5,
        threshold=1000,
        action="retrain",
        started_at=T0,
    )
    return Notification(alert, 7, False, T0 + timedelta(minutes=6), "http://127.0.0.1:8090/api/alerts/x")


def test_alertmanager_payload() -> None:
    firing = alertmanager_alert(_notification(), resend_s=60)
    assert firing["labels"] == {"alertname": "slow", "model_version": "m@1", "team_name": "sre", "severity": "critical"}
    assert firing["annotations"]["summary"] == "p95 high" and firing["annotations"]["action"] == "retrain"
    assert firing["startsAt"] == T0.isoformat()
    assert firing["endsAt"] == (T0 + timedelta(minutes=10)).isoformat()  # sent_at + 4 resends
    resolved = alertmanager_alert(_notification("resolved"), resend_s=60)
    assert resolved["endsAt"] == (T0 + timedelta(minutes=5)).isoformat()  # the resolution time
    assert firing["generatorURL"].startswith("http://")


def test_webhook_payload_and_signature() -> None:
    n = _notification()
    body = json.dumps(webhook_payload(n)).encode()
    payload = json.loads(body)
    assert payload["kind"] == "transition" and payload["alert"]["state"] == "firing"
    assert payload["alert"]["action"] == "retrain" and payload["delivery_id"] == 7
    ts = "1767225600"
    header = sign("s3cret", body, ts)
    assert header.startswith("sha256=") and SIGNATURE_HEADER == "X-Atalaia-Signature"
    assert verify_signature("s3cret", body, header, ts, now=1767225600 + 10)
    assert not verify_signature("s3cret", body + b" ", header, ts, now=1767225600)  # body changed
    assert not verify_signature("s3cret", body, header, "1767225601", now=1767225600)  # timestamp changed
    assert not verify_signature("s3cret", body, header, ts, now=1767225600 + 301)  # replayed later
    assert not verify_signature("s3cret", body, header, "soon", now=1767225600)
    assert not verify_signature("s3cret", body, "", ts, now=1767225600)


def test_slack_payload() -> None:
    p = slack_payload(_notification())
    assert p["text"].startswith(":rotating_light: [FIRING] slow (critical)") and "model_version=m@1" in p["text"]
    assert p["blocks"][0]["type"] == "section" and any("Action" in f["text"] for f in p["blocks"][1]["fields"])


def test_receivers_from_settings(tmp_path: Path) -> None:
    assert receivers_from_settings(Settings(home=tmp_path)) == []
    got = receivers_from_settings(
        Settings(
            home=tmp_path,
            alertmanager_url="http://127.0.0.1:9093/",
            webhook_url="http://127.0.0.1:1/hook",
            webhook_secret="x",
            slack_webhook_url="https://hooks.example/T/B/X",
        )
    )
    assert [r.name for r in got] == ["alertmanager", "webhook", "slack"]
    assert got[0].refresh_s == 60.0 and got[1].refresh_s is None
    for r in got:
        r.close()
    with pytest.raises(ValueError, match="ATALAIA_WEBHOOK_SECRET"):
        receivers_from_settings(Settings(home=tmp_path, webhook_url="http://127.0.0.1:1/hook"))


def test_receiver_urls_are_checked() -> None:
    from atalaia.settings import ConfigError, load_settings

    with pytest.raises(ConfigError) as info:
        load_settings(home="/tmp/x", slack_webhook_url="hooks.slack.com/services/T/B/SECRET")
    assert "ATALAIA_SLACK_WEBHOOK_URL=<hidden>" in str(info.value) and "SECRET" not in str(info.value)
