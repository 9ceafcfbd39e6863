"""`atalaia deadletter list|replay` on the real broker: filters, dry run, and replay at most once."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from kafka import KafkaConsumer, KafkaProducer
from typer.testing import CliRunner

from atalaia.deadletter import REPLAY_HEADER, dead_letter_for
from atalaia.settings import Settings
from atalaia.topics import ensure_topics
from composition.cli.main import app
from tests.conftest import settings_env

pytestmark = pytest.mark.integration


def _read_all(settings: Settings, *topics: str) -> list[tuple[str, bytes | None, bytes, dict[str, bytes]]]:
    consumer = KafkaConsumer(
        *[settings.topic(t) for t in topics],
        bootstrap_servers=settings.bootstrap_servers,
        auto_offset_reset="earliest",
        consumer_timeout_ms=3000,
    )
    try:
        return [(m.topic, m.key, m.value, dict(m.headers)) for m in consumer]
    finally:
        consumer.close()


def test_list_filters_and_replay_publishes_each_record_once(
    isolated_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = isolated_settings
    ensure_topics(settings)
    for name, value in settings_env(settings).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("COLUMNS", "250")  # rich wraps tables at the terminal width
    event_id = str(uuid.uuid4())
    missing_field = json.dumps({"type": "inference", "schema_version": 1, "event_id": event_id}).encode()
    records = [
        dead_letter_for(missing_field, "invalid inference event: field 'service'", settings.topic("inference"), 1, 5),
        dead_letter_for(b"\xff\xfe junk", "message is not valid UTF-8 (byte 0)", settings.topic("inference"), 0, 9),
        dead_letter_for(b"nope", "message is not valid JSON", settings.topic("feedback"), 0, 2, consumer="w"),
    ]
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers)
    for rec in records:
        producer.send(settings.topic("deadletter"), key=rec.key, value=rec.to_json())
    producer.send(settings.topic("deadletter"), value=b"not a dead-letter record")
    producer.flush()
    producer.close()
    runner = CliRunner()

    def cli(*args: str) -> str:
        result = runner.invoke(app, ["deadletter", *args])
        assert result.exit_code == 0, result.output
        return result.output  # records on stdout, the summary on stderr

    def json_lines(*args: str) -> list[dict[str, Any]]:
        # stdout only: stderr may also hold a loaded machine's kafka-python warnings (JSON log lines).
        result = runner.invoke(app, ["deadletter", *args])
        assert result.exit_code == 0, result.output
        return [json.loads(line) for line in result.stdout.splitlines()]

    # list: every record with its reason and source; filters narrow it; JSON lines carry all fields.
    table = cli("list")
    assert "field 'service'" in table and "not valid JSON" in table and "not a dead-letter record" in table
    rows = json_lines("list", "--json", "--source-topic", "inference")
    assert {r["source_offset"] for r in rows} == {5, 9} and not any(r["replayed"] for r in rows)
    assert [r["source_offset"] for r in json_lines("list", "--json", "--reason", "UTF-8")] == [9]
    assert json_lines("list", "--json", "--since", "2999-01-01T00:00:00Z") == []
    assert len(json_lines("list", "--json", "--since", "1h", "--limit", "2")) == 2

    # dry run: says what it would do, publishes and records nothing.
    dry = cli("replay", "--dry-run", "--source-topic", "inference")
    assert dry.count("would replay") == 3 and _read_all(settings, "inference", "feedback") == []

    # a filtered replay, then the same again: published once.
    cli("replay", "--reason", "field 'service'")
    again = cli("replay", "--reason", "field 'service'")
    assert "replayed 0" in again and "already replayed 1" in again
    [(_, key, value, headers)] = _read_all(settings, "inference")
    assert value == missing_field and key == event_id.encode()
    assert headers[REPLAY_HEADER] == str(records[0].event_id).encode()

    # the records the filter skipped are still replayable; then nothing is left.
    cli("replay")
    assert "replayed 0" in cli("replay")
    published = sorted((t, v) for t, _, v, _ in _read_all(settings, "inference", "feedback"))
    assert published == sorted(
        [
            (settings.topic("inference"), missing_field),
            (settings.topic("inference"), b"\xff\xfe junk"),
            (settings.topic("feedback"), b"nope"),
        ]
    )
    rows = json_lines("list", "--json")
    assert sorted(r["replayed"] for r in rows if "reason" in r) == [True, True, True]


def test_bad_since_is_a_usage_error(isolated_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in settings_env(isolated_settings).items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(app, ["deadletter", "list", "--since", "yesterday"])
    assert result.exit_code == 2 and "--since wants a duration" in result.output
