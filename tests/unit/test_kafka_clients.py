"""The one Kafka module: client constructors live only there, and settings reach every client."""

from __future__ import annotations

import ast
import threading
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from atalaia.kafka import clients
from atalaia.settings import ConfigError, Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
#: Packages whose code runs in production (tests/ and bench/ may build their own clients).
SOURCES = ("atalaia", "composition", "producers", "consumers", "monitors", "retrain", "inference", "otlp", "gateway")
CONSTRUCTORS = {"KafkaProducer", "KafkaConsumer", "KafkaAdminClient", "App"}
KAFKA_MODULE = ROOT / "atalaia" / "kafka" / "clients.py"


def _constructor_calls(path: Path) -> list[str]:
    """Kafka client constructors named in ``path``: imported, called or passed on (``faust.App``:
    called), so an alias or a class handed to a factory is found too."""
    found = []
    tree = ast.parse(path.read_text(encoding="utf-8"))
    called = {id(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call)}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in ("kafka", "faust"):
            found += [a.name for a in node.names if a.name in CONSTRUCTORS]
        elif isinstance(node, ast.Name) and node.id in CONSTRUCTORS - {"App"}:
            found.append(node.id)
        elif isinstance(node, ast.Attribute) and node.attr in CONSTRUCTORS:
            base = node.value
            # faust.App also names the type in annotations: only a call of it counts.
            if node.attr != "App" or (isinstance(base, ast.Name) and base.id == "faust" and id(node) in called):
                found.append(node.attr)
    return found


def test_kafka_clients_are_built_only_in_the_kafka_module() -> None:
    offenders = {}
    for package in SOURCES:
        for path in (ROOT / package).rglob("*.py"):
            if path == KAFKA_MODULE:
                continue
            calls = _constructor_calls(path)
            if calls:
                offenders[str(path.relative_to(ROOT))] = calls
    assert offenders == {}, f"build Kafka clients through atalaia.kafka.clients, not in {offenders}"


def test_the_kafka_module_builds_every_kind() -> None:
    assert set(_constructor_calls(KAFKA_MODULE)) == CONSTRUCTORS


def test_walker_finds_aliases_and_references(tmp_path: Path) -> None:
    src = tmp_path / "x.py"
    src.write_text(
        "import kafka, faust\nfrom kafka.admin import KafkaAdminClient as A\nkafka.KafkaConsumer()\n"
        "faust.App('a')\nmake(kafka.KafkaProducer)\napp.App()\n"
    )
    assert sorted(_constructor_calls(src)) == ["App", "KafkaAdminClient", "KafkaConsumer", "KafkaProducer"]


def test_security_settings_reach_kafka_python_and_faust() -> None:
    settings = Settings(
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism="PLAIN",
        kafka_sasl_username="svc",
        kafka_sasl_password=SecretStr("pw"),
    )
    opts = clients.client_options(settings)
    assert opts["sasl_plain_password"] == "pw" and opts["sasl_mechanism"] == "PLAIN"
    creds = clients.faust_credentials(settings)
    assert (creds.username, creds.password, creds.mechanism.value) == ("svc", "pw", "PLAIN")
    assert "pw" not in repr(settings) and "pw" not in repr(creds)


def test_sasl_without_credentials_fails_at_start_naming_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATALAIA_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("ATALAIA_KAFKA_SASL_USERNAME", "svc")
    with pytest.raises(ConfigError, match="ATALAIA_KAFKA_SASL_PASSWORD"):
        load_settings()
    monkeypatch.setenv("ATALAIA_KAFKA_SASL_PASSWORD", "secret-value")
    monkeypatch.setenv("ATALAIA_KAFKA_SSL_CAFILE", "/nonexistent/ca.pem")
    with pytest.raises(ConfigError, match="ATALAIA_KAFKA_SSL_CAFILE") as err:
        load_settings()
    assert "secret-value" not in str(err.value)


def test_min_insync_replicas_cannot_exceed_replication() -> None:
    with pytest.raises(ConfigError, match="ATALAIA_TOPIC_MIN_INSYNC_REPLICAS"):
        load_settings(topic_replication_factor=2, topic_min_insync_replicas=3)


class _FakeRecord:
    def __init__(self, offset: int, value: bytes) -> None:
        self.offset, self.value = offset, value


class _FakeConsumer:
    """Two polls of records, then nothing; a first connection that fails like a broker outage."""

    def __init__(self, batches: list[list[bytes]]) -> None:
        from kafka import TopicPartition

        self.tp = TopicPartition("t.alerts", 0)
        self.batches = batches
        self.commits = 0
        self.closed = False
        self.offset = 0

    def poll(self, timeout_ms: int = 0, max_records: int = 0) -> dict[Any, list[_FakeRecord]]:
        if not self.batches:
            return {}
        batch = self.batches.pop(0)
        records = [_FakeRecord(self.offset + i, v) for i, v in enumerate(batch)]
        self.offset += len(batch)
        return {self.tp: records}

    def commit(self) -> None:
        self.commits += 1

    def close(self) -> None:
        self.closed = True


class _FakePublisher:
    def __init__(self) -> None:
        self.sent: list[tuple[Any, str]] = []

    def publish_retrying(self, event: Any, topic: str, **_: Any) -> None:
        self.sent.append((event, topic))

    def close(self) -> None:
        pass


def test_follow_reconnects_dead_letters_and_commits(monkeypatch: pytest.MonkeyPatch) -> None:
    from atalaia.events import MetricEvent

    metric = MetricEvent(
        event_id="00000000-0000-0000-0000-000000000001",
        source_event_id="00000000-0000-0000-0000-000000000002",
        source_ts="2026-01-01T00:00:00Z",
        service="s",
        model_version="m@1",
        name="latency_ms",
        value=1.0,
    )
    fake = _FakeConsumer([[metric.to_json(), b"not json"], [b'{"type": "metric"}']])
    connects: list[int] = []

    def connect(*_: Any) -> tuple[Any, dict[Any, int]]:
        connects.append(1)
        if len(connects) == 1:
            raise OSError("broker down")
        return fake, {}

    monkeypatch.setattr(clients, "_connect", connect)
    monkeypatch.setattr(clients, "RETRY_INITIAL_S", 0.01)
    stop = threading.Event()
    seen: list[Any] = []
    polls: list[bool] = []

    def on_poll(polled: bool) -> None:
        polls.append(polled)
        if len(polls) >= 3:
            stop.set()

    publisher = _FakePublisher()
    stats = clients.FollowStats()
    clients.follow(
        Settings(topic_namespace="t"),
        "t.metrics",
        MetricEvent,
        lambda event, msg: seen.append(event),
        stop=stop,
        client_id="test",
        group_id="g",
        on_poll=on_poll,
        stats=stats,
        publisher=publisher,  # type: ignore[arg-type]
    )
    assert len(connects) == 2 and seen == [metric]
    assert [topic for _, topic in publisher.sent] == ["t.deadletter", "t.deadletter"]
    assert {dl.consumer for dl, _ in publisher.sent} == {"test"}
    assert (stats.malformed, stats.dead_lettered, fake.commits) == (2, 2, 2)
    assert fake.closed


def test_follow_dead_letters_what_the_handler_refuses(monkeypatch: pytest.MonkeyPatch) -> None:
    from atalaia.events import ModelEvent

    event = ModelEvent(type="deploy", model_version="m@2", artefact_path="/tmp/x")
    fake = _FakeConsumer([[event.to_json()]])
    monkeypatch.setattr(clients, "_connect", lambda *_: (fake, {}))
    stop = threading.Event()
    publisher = _FakePublisher()

    def refuse(ev: ModelEvent, msg: clients.Message) -> None:
        raise clients.Refused("unsigned model event", "signature")

    clients.follow(
        Settings(topic_namespace="t"),
        "t.models",
        ModelEvent,
        refuse,
        stop=stop,
        client_id="inference",
        start="latest",
        on_poll=lambda polled: stop.set(),
        publisher=publisher,  # type: ignore[arg-type]
    )
    ((dead, topic),) = publisher.sent
    assert (dead.reason, dead.field, topic) == ("unsigned model event", "signature", "t.deadletter")
    assert fake.commits == 0  # no group: nothing to commit
