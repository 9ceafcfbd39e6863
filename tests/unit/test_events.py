from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
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


def test_metric_batch_round_trips_and_per_metric_messages_still_read() -> None:
    """The compact form carries every metric with its deterministic id; the old form still parses."""
    from atalaia.events import MAX_EVENTS_PER_METRIC_BATCH, MetricBatchEvent, MetricEvent, parse_metrics

    sources = [uuid.uuid4() for _ in range(MAX_EVENTS_PER_METRIC_BATCH + 3)]
    metrics = [
        MetricEvent(
            event_id=MetricEvent.id_for(src, name),
            source_event_id=src,
            source_ts=datetime(2026, 1, 1, tzinfo=UTC),
            service="svc",
            model_version="m@1",
            name=name,
            value=None if name == "perplexity" else 1.5,
            error="boom" if name == "perplexity" else None,
            labels={"backend": "x"} if name == "toxicity_response" else {},
        )
        for src in sources
        for name in ("latency_ms", "perplexity", "toxicity_response")
    ]
    messages = MetricBatchEvent.pack(metrics)
    assert [len(m.events) for m in messages] == [MAX_EVENTS_PER_METRIC_BATCH, 3]
    read = [m for message in messages for m in parse_metrics(message.to_json())]
    assert [(m.event_id, m.source_event_id, m.name, m.value, m.error, m.labels) for m in read] == [
        (m.event_id, m.source_event_id, m.name, m.value, m.error, m.labels) for m in metrics
    ]
    assert all(m.source_ts == metrics[0].source_ts and m.model_version == "m@1" for m in read)
    assert parse_metrics(metrics[0].to_json()) == [metrics[0]]
    with pytest.raises(EventError, match="expected a metric"):
        parse_metrics(
            b'{"type": "deploy", "schema_version": 2, "event_id": "%s", "ts": "2026-01-01T00:00:00Z", '
            b'"model_version": "v"}' % str(uuid.uuid4()).encode()
        )


def test_non_finite_metadata_is_kept_as_null_and_typed_fields_refuse_it() -> None:
    """``NaN``/``Infinity`` are Python's JSON, not JSON: PostgreSQL's json columns refuse them, so
    an event carrying one in its metadata would block its partition (a hypothesis example found
    ``{"": Infinity}``). Metadata keeps them as null, as the SDK writes them; typed fields refuse."""
    raw = json.dumps(_valid() | {"metadata": {"": float("inf"), "s": [float("nan"), 1.5], "k": "NaN"}})
    assert "Infinity" in raw
    ev = parse_event(raw.encode(), InferenceEvent)
    assert ev.metadata == {"": None, "s": [None, 1.5], "k": "NaN"}
    assert json.loads(ev.to_json())["metadata"] == {"": None, "s": [None, 1.5], "k": "NaN"}
    feedback = json.loads(FeedbackEvent(inference_event_id=uuid.uuid4(), rating=1).to_json())
    fb = parse_event(json.dumps(feedback | {"metadata": {"x": float("-inf")}}), FeedbackEvent)
    assert fb.metadata == {"x": None}
    with pytest.raises(EventError) as info:
        parse_event(json.dumps(_valid() | {"latency_ms": float("inf")}).encode())
    assert info.value.field == "latency_ms"
