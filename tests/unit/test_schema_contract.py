"""The exported JSON Schemas (docs/events/) are the contract for producers in other languages:
every instance a schema accepts must be accepted by the real parser (``parse_event``), and every
event the parser (or our SDK) produces must validate against its schema.

Instances are generated from each committed schema file by :func:`from_schema` below, a small
generator for the JSON Schema subset pydantic emits (``hypothesis-jsonschema`` 0.23.1, the latest,
fails on this hypothesis 6.170: "'many' object has no attribute 'more'"). What JSON Schema cannot
express is stated in each schema's description and kept out of the generated strings: text must
be storable (no NUL, no lone UTF-16 surrogate) and a message is at most ``MAX_EVENT_BYTES``."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atalaia.events import (
    ENVELOPE_FIELDS,
    AlertEvent,
    ChatMessage,
    DeadLetterEvent,
    FeedbackEvent,
    InferenceEvent,
    MetricEvent,
    ModelEvent,
    parse_event,
)

SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "events"
NAMES = sorted(p.name.removesuffix(".schema.json") for p in SCHEMAS.glob("*.schema.json"))
PROFILE = settings(
    max_examples=30, derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck)
)
# Storable text (see the module doc): no NUL, no surrogates (hypothesis never emits lone ones in JSON).
STORABLE = st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",))


JSON_LEAF = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(STORABLE)
)
JSON_VALUE = st.recursive(
    JSON_LEAF,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(STORABLE), inner, max_size=3),
    max_leaves=6,
)
DATETIMES = st.builds(
    lambda dt, minutes: dt.replace(tzinfo=timezone(timedelta(minutes=minutes))).isoformat(),
    st.datetimes(min_value=datetime(2, 1, 1), max_value=datetime(9998, 12, 31)),
    st.integers(min_value=-14 * 60, max_value=14 * 60),
) | st.datetimes(timezones=st.just(UTC)).map(lambda d: d.isoformat().replace("+00:00", "Z"))


def from_schema(schema: dict[str, Any], root: dict[str, Any] | None = None) -> st.SearchStrategy[Any]:
    """Instances of ``schema`` (the keywords pydantic's JSON Schemas use)."""
    root = root or schema
    if "$ref" in schema:
        return from_schema(root["$defs"][schema["$ref"].rsplit("/", 1)[-1]], root)
    if "anyOf" in schema:
        return st.one_of([from_schema(s, root) for s in schema["anyOf"]])
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema.get("type")
    if kind == "null":
        return st.none()
    if kind == "boolean":
        return st.booleans()
    if kind == "integer":
        return st.integers(min_value=schema.get("minimum"), max_value=schema.get("maximum"))
    if kind == "number":
        floats = st.floats(
            min_value=schema.get("minimum"), max_value=schema.get("maximum"), allow_nan=False, allow_infinity=False
        )
        # Whole numbers are numbers too, within the same bounds (a share in [0, 1] takes 0 and 1).
        return floats | st.integers(
            min_value=int(schema.get("minimum", -(2**53))), max_value=int(schema.get("maximum", 2**53))
        )
    if kind == "string":
        if schema.get("format") == "uuid":
            return st.uuids().map(str)
        if schema.get("format") == "date-time":
            return DATETIMES
        return st.text(STORABLE, min_size=schema.get("minLength", 0), max_size=min(schema.get("maxLength", 40), 40))
    if kind == "array":
        low = schema.get("minItems", 0)
        return st.lists(from_schema(schema.get("items", {}), root), min_size=low, max_size=max(low, 3))
    if kind == "object":
        props: dict[str, Any] = schema.get("properties", {})
        required = set(schema.get("required", []))
        extra = schema.get("additionalProperties", True)
        extras: st.SearchStrategy[dict[str, Any]]
        if isinstance(extra, dict):
            extras = st.dictionaries(st.text(STORABLE, max_size=10), from_schema(extra, root), max_size=3)
        elif extra:
            # Extra fields are kept by the parser (a newer producer may add some); none may shadow a known one.
            keys = st.text(STORABLE, max_size=10).map(lambda k: "x_" + k)
            extras = st.dictionaries(keys, JSON_VALUE, max_size=2)
        else:
            extras = st.just({})
        fields = {k: from_schema(v, root) for k, v in props.items()}
        present = st.fixed_dictionaries(
            {k: fields[k] for k in props if k in required},
            optional={k: fields[k] for k in props if k not in required},
        )
        return st.builds(lambda a, b: {**b, **a}, present, extras)
    return JSON_VALUE


def _schema(name: str) -> dict[str, Any]:
    return json.loads((SCHEMAS / f"{name}.schema.json").read_text())


def test_every_schema_requires_what_the_parser_requires() -> None:
    assert NAMES == ["alert", "deadletter", "feedback", "inference", "metric", "metricbatch", "model"]
    for name in NAMES:
        required = set(_schema(name)["required"])
        assert {"type", *ENVELOPE_FIELDS} <= required, name


@pytest.mark.parametrize("name", NAMES)
def test_every_instance_of_a_schema_is_accepted_by_the_parser(name: str) -> None:
    schema = _schema(name)

    @PROFILE
    @given(from_schema(schema))
    def check(instance: dict[str, Any]) -> None:
        raw = json.dumps(instance).encode("utf-8")
        event = parse_event(raw)  # raises EventError with the reason if the contract is broken
        # ... and what the parser made of it still fits the schema (the reverse direction).
        jsonschema.validate(json.loads(event.to_json()), schema)

    check()


def test_a_minimal_instance_without_the_envelope_is_refused_by_both() -> None:
    """The issue's case: schema-valid minus type/envelope must be invalid for the schema too."""
    minimal = {
        "service": "s",
        "model_version": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "response": "r",
        "latency_ms": 1,
        "prompt_tokens": 1,
        "completion_tokens": 1,
        "cost": 0,
    }
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(minimal, _schema("inference"))
    with pytest.raises(Exception):  # noqa: B017 - EventError
        parse_event(json.dumps(minimal).encode())


def test_events_built_by_the_sdk_validate_against_their_schema() -> None:
    source = uuid.uuid4()
    inference = InferenceEvent(
        service="s",
        model_version="m",
        messages=[ChatMessage(role="user", content="hi")],
        response="r",
        latency_ms=1,
        prompt_tokens=1,
        completion_tokens=1,
        cost=0,
        metadata={"k": [1, {"x": None}]},
    )
    events = {
        "inference": inference,
        "feedback": FeedbackEvent(inference_event_id=source, rating=1),
        "metric": MetricEvent.of(inference, "latency_ms", 1.0),
        "alert": AlertEvent(alert_id=uuid.uuid4(), fingerprint="f", rule="r", state="firing", started_at=inference.ts),
        "model": ModelEvent(type="deploy", model_version="m@2"),
        "deadletter": DeadLetterEvent(reason="bad", source_topic="t", original="{}"),
    }
    for name, event in events.items():
        jsonschema.validate(json.loads(event.to_json()), _schema(name))
