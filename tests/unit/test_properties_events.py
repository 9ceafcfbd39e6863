"""Property-based tests of event parsing: whatever arrives on a topic, ``parse_event`` returns an
event or raises ``EventError`` with a reason, never anything else, and what it accepts can be
written back out (to Kafka, the spool and the database). The worker's handler turns each refusal
into a dead-letter record that carries the original bytes.

Fixed seed (``derandomize``), bounded example counts and no example database, so the suite is
reproducible and quick.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from types import SimpleNamespace
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from atalaia.deadletter import dead_letter_for, original_bytes
from atalaia.events import (
    EVENT_TYPES,
    MAX_EVENT_BYTES,
    ChatMessage,
    DeadLetterEvent,
    EventError,
    FeedbackEvent,
    InferenceEvent,
    parse_event,
)

PROFILE = settings(
    max_examples=150,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Any JSON value, including strings with every code point JSON can escape (lone surrogates too).
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


def valid_inference() -> dict[str, Any]:
    """A valid inference event as it travels on the wire."""
    ev = InferenceEvent(
        service="svc",
        model_version="m@1",
        messages=[ChatMessage(role="user", content="How many vacation days?")],
        response="30 days.",
        latency_ms=120.0,
        prompt_tokens=12,
        completion_tokens=4,
        cost=0.001,
        reference="Thirty.",
    )
    return dict(json.loads(ev.to_json()))


def valid_feedback() -> dict[str, Any]:
    return dict(json.loads(FeedbackEvent(inference_event_id=uuid.uuid4(), rating=1, comment="ok").to_json()))


def check(raw: bytes | str, expected: type | None = None) -> Any:
    """Parse; on success the event must serialise and parse back to itself."""
    try:
        event = parse_event(raw, expected)
    except EventError as exc:
        assert exc.reason and isinstance(exc.reason, str)
        return exc
    again = parse_event(event.to_json(), expected)
    assert again == event
    return event


@PROFILE
@given(st.binary(max_size=300))
def test_random_bytes(raw: bytes) -> None:
    check(raw)
    check(raw, InferenceEvent)


@PROFILE
@given(json_values)
def test_random_json(value: Any) -> None:
    check(json.dumps(value).encode())
    check(json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass"))


@PROFILE
@given(
    base=st.sampled_from([valid_inference, valid_feedback]),
    field=st.sampled_from(
        [
            "schema_version",
            "event_id",
            "ts",
            "type",
            "service",
            "model_version",
            "messages",
            "response",
            "latency_ms",
            "prompt_tokens",
            "cost",
            "context",
            "metadata",
            "inference_event_id",
            "rating",
            "unknown_extra",
        ]
    ),
    value=json_values,
    drop=st.booleans(),
)
def test_one_field_wrong_type_or_missing(base: Any, field: str, value: Any, drop: bool) -> None:
    data = base()
    if drop:
        data.pop(field, None)
    else:
        data[field] = value
    result = check(json.dumps(data).encode())
    if isinstance(result, EventError) and field in data and field in EVENT_TYPES["inference"].model_fields:
        # The reason names what was wrong (the field, or the message-level problem).
        assert result.field is None or result.field.split(".")[0] in {field, "type", *data}


@PROFILE
@given(
    st.integers().filter(lambda v: v != 1)
    | st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=5)
    | st.floats(allow_nan=False)
)
def test_unknown_schema_version_is_refused_by_name(version: Any) -> None:
    data = valid_inference() | {"schema_version": version}
    result = check(json.dumps(data).encode())
    if isinstance(result, InferenceEvent):  # only what coerces to 1 (1.0, "1") is accepted
        assert result.schema_version == 1 and float(version) == 1
        return
    assert isinstance(result, EventError) and result.field == "schema_version", result


@PROFILE
@given(
    st.datetimes(
        timezones=st.builds(timezone, st.timedeltas(min_value=timedelta(hours=-23), max_value=timedelta(hours=23)))
    ).map(datetime.isoformat)
    | st.datetimes().map(datetime.isoformat)
    | st.sampled_from(["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "2026-02-30T00:00:00Z"])
    | st.integers()
    | st.floats()
)
def test_timestamps_at_the_edges(ts: Any) -> None:
    result = check(json.dumps(valid_inference() | {"ts": ts}).encode())
    if isinstance(result, InferenceEvent):
        assert result.ts.tzinfo is UTC


@PROFILE
@given(st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=20))
def test_strings_survive_the_round_trip(text: str) -> None:
    data = valid_inference() | {"response": text, "metadata": {text: [text]}}
    event = check(json.dumps(data).encode())
    assert isinstance(event, InferenceEvent) and event.response == text


@PROFILE
@given(st.integers(min_value=0xD800, max_value=0xDFFF), st.sampled_from(["response", "service", "metadata"]))
def test_lone_surrogate_escapes_are_refused(code: int, field: str) -> None:
    # Valid JSON and valid UTF-8, but not Unicode text: such a string could never be stored
    # (PostgreSQL, SQLite and the JSON encoder refuse it) and would block the worker for good.
    escaped = f"x\\u{code:04x}y"
    value = f'{{"k": "{escaped}"}}' if field == "metadata" else f'"{escaped}"'
    raw = json.dumps(valid_inference() | {field: "PLACEHOLDER"}).replace('"PLACEHOLDER"', value).encode()
    result = check(raw)
    assert isinstance(result, EventError) and "surrogate" in result.reason


@PROFILE
@given(st.text(max_size=10), st.text(max_size=10), st.sampled_from(["response", "request_id", "messages", "metadata"]))
def test_nul_characters_are_refused(before: str, after: str, field: str) -> None:
    # PostgreSQL text cannot hold NUL: such an event would be retried forever instead of stored.
    text = before + "\x00" + after
    value: Any = {"response": text, "request_id": text, "messages": [{"role": "user", "content": text}]}.get(
        field, {text: 1}
    )
    result = check(json.dumps(valid_inference() | {field: value}).encode())
    assert isinstance(result, EventError) and "NUL" in result.reason


def test_surrogate_pairs_are_text() -> None:
    raw = json.dumps(valid_inference() | {"response": "\U0001f600"}).encode()  # ensure_ascii: "\ud83d\ude00"
    assert b"\\ud83d\\ude00" in raw and parse_event(raw).response == "\U0001f600"


def test_deep_nesting_is_refused_not_crashed() -> None:
    for depth in (50, 2_000, 200_000):
        nested = '{"a":' * depth + "1" + "}" * depth
        raw = json.dumps(valid_inference())[:-1] + f', "metadata": {nested}}}'
        check(raw.encode())
        check("[" * depth + "]" * depth)


def test_huge_messages_are_refused_up_front() -> None:
    data = valid_inference()
    data["response"] = "x" * MAX_EVENT_BYTES
    result = check(json.dumps(data).encode())
    assert isinstance(result, EventError) and "exceeds" in result.reason
    data["response"] = "x" * (MAX_EVENT_BYTES - 2_000)  # just under: accepted
    assert isinstance(check(json.dumps(data).encode()), InferenceEvent)


# -- the worker's handler: every refusal becomes a dead-letter record with the original bytes ----
def _kafka_event(raw: Any, offset: int) -> Any:
    """What faust hands the agent: an event with ``.value`` and ``.message`` (topic, partition, offset)."""
    message = SimpleNamespace(topic="atalaia.inference", partition=1, offset=offset, value=raw)
    return SimpleNamespace(value=raw, message=message)


@PROFILE
@given(
    st.lists(
        st.binary(max_size=80)
        | json_values.map(lambda v: json.dumps(v).encode())
        | st.just(json.dumps(valid_inference()).encode())
        | st.none(),
        min_size=1,
        max_size=8,
    )
)
def test_worker_handler_dead_letters_every_bad_message(raws: list[bytes | None]) -> None:
    from consumers.worker import split_valid

    batch = [_kafka_event(raw, offset) for offset, raw in enumerate(raws)]
    valid, dead = split_valid(batch, InferenceEvent, "atalaia-worker")
    assert len(valid) + len(dead) == len(raws)
    for ev in valid:
        assert isinstance(ev, InferenceEvent)
        ev.to_json()  # storable
    by_offset = {d.source_offset: d for d in dead}
    for offset, raw in enumerate(raws):
        if offset in by_offset:
            record = parse_event(by_offset[offset].to_json(), DeadLetterEvent)  # the record itself is valid
            assert record.reason and record.consumer == "atalaia-worker" and record.source_partition == 1
            assert original_bytes(record) == (raw or b"")


@PROFILE
@given(st.binary(max_size=200))
@example(b"\x00")
@example(b'{"ok": "a\x00b"}')
def test_dead_letter_records_keep_the_original_bytes(raw: bytes) -> None:
    record = dead_letter_for(raw, "reason", "atalaia.inference", 0, 1)
    parsed = parse_event(record.to_json(), DeadLetterEvent)
    assert original_bytes(parsed) == raw and parsed.ts <= datetime.now(UTC)
