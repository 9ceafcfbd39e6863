from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from atalaia.events import (
    ChatMessage,
    EventError,
    FeedbackEvent,
    InferenceEvent,
    export_json_schemas,
    parse_event,
)


def _valid() -> dict:
    ev = InferenceEvent(
        service="svc",
        model_version="m@1",
        messages=[ChatMessage(role="user", content="How many vacation days?")],
        response="30 days.",
        latency_ms=120.0,
        prompt_tokens=12,
        completion_tokens=4,
        cost=0.001,
    )
    return json.loads(ev.to_json())


def test_round_trip_keeps_every_field() -> None:
    data = _valid()
    ev = parse_event(json.dumps(data).encode())
    assert isinstance(ev, InferenceEvent)
    assert json.loads(ev.to_json()) == data
    assert data["ts"].endswith("Z")  # RFC 3339 UTC


def test_unknown_future_fields_are_kept() -> None:
    data = _valid() | {"new_field": {"x": 1}}
    ev = parse_event(json.dumps(data))
    assert json.loads(ev.to_json())["new_field"] == {"x": 1}


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: d.pop("latency_ms"), "latency_ms"),
        (lambda d: d.update(latency_ms="slow"), "latency_ms"),
        (lambda d: d.update(prompt_tokens=-1), "prompt_tokens"),
        (lambda d: d.update(event_id="not-a-uuid"), "event_id"),
        (lambda d: d.update(ts="2026-01-01T00:00:00"), "ts"),
        (lambda d: d.pop("event_id"), "event_id"),
        (lambda d: d.update(messages="not a list"), "messages"),
        (lambda d: d.update(messages=[{"role": "user"}]), "messages.0.content"),
        (lambda d: d.update(schema_version=99), "schema_version"),
    ],
)
def test_bad_fields_are_named(mutate, field: str) -> None:
    data = _valid()
    mutate(data)
    with pytest.raises(EventError) as info:
        parse_event(json.dumps(data).encode())
    assert info.value.field == field
    assert f"'{field}'" in info.value.reason


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        (b"\xff\xfe", "UTF-8"),
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"type": "bogus"}', "event type"),
        (b"[" * 100_000 + b"]" * 100_000, "JSON"),
        (b"x" * 1_000_000, "exceeds"),
    ],
)
def test_malformed_messages_raise_event_error_only(raw: bytes, needle: str) -> None:
    with pytest.raises(EventError) as info:
        parse_event(raw)
    assert needle in info.value.reason


def test_expected_type_is_enforced() -> None:
    fb = FeedbackEvent(inference_event_id=uuid.uuid4(), rating=1)
    with pytest.raises(EventError, match="expected"):
        parse_event(fb.to_json(), InferenceEvent)


def test_docs_schemas_are_current(tmp_path: Path) -> None:
    export_json_schemas(tmp_path)
    docs = Path(__file__).parents[2] / "docs" / "events"
    for generated in tmp_path.iterdir():
        committed = docs / generated.name
        assert committed.exists(), f"run `make schemas`: {committed} missing"
        assert committed.read_text() == generated.read_text(), f"run `make schemas`: {committed} is stale"
