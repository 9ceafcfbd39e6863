"""Event schemas: the JSON objects that travel on Atalaia's Kafka topics.

Every event has ``schema_version``, ``event_id`` (UUID), ``ts`` (RFC 3339, UTC) and ``type``.
Unknown extra fields are kept (a newer producer may add fields); a missing or ill-typed required
field is rejected with the field's name, so a dead-letter record says exactly what was wrong.

Examples
--------
>>> ev = InferenceEvent(service="svc", model_version="m@1",
...     messages=[ChatMessage(role="user", content="hi")], response="hello",
...     latency_ms=12.5, prompt_tokens=3, completion_tokens=2, cost=0.0)
>>> parse_event(ev.to_json()).type
'inference'
>>> parse_event(b'{"type": "inference"}')
Traceback (most recent call last):
...
atalaia.events.EventError: invalid inference event: field 'schema_version': Field required
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

# Version 2 adds optional fields (time to first token, provider, finish reason, caller, subject),
# message content as a list of parts and events without captured messages; version-1 events stay
# readable: every added field is optional and every version-1 value is still valid.
SCHEMA_VERSION = 2
SUPPORTED_SCHEMA_VERSIONS = frozenset({1, 2})
# Keep events well under Kafka's default 1 MB message limit; larger ones are refused up front.
MAX_EVENT_BYTES = 900_000
ENVELOPE_FIELDS = ("schema_version", "event_id", "ts")
MAX_INT32 = 2**31 - 1
# Scored events per compact metrics message: 50 events x ~20 metrics stays far below the limit.
MAX_EVENTS_PER_METRIC_BATCH = 50


class EventError(ValueError):
    """A message could not be parsed into an event; ``reason`` and ``field`` say why."""

    def __init__(self, reason: str, field: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.field = field


def utcnow() -> datetime:
    """Current time, timezone-aware UTC."""
    return datetime.now(UTC)


class _Event(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    schema_version: int = SCHEMA_VERSION
    event_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    ts: datetime = Field(default_factory=utcnow)

    @field_validator("schema_version")
    @classmethod
    def _known_version(cls, value: int) -> int:
        if value not in SUPPORTED_SCHEMA_VERSIONS:
            raise ValueError(
                f"unsupported schema_version {value}; this build reads {sorted(SUPPORTED_SCHEMA_VERSIONS)}"
            )
        return value

    @field_validator("ts")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        # Naive timestamps are ambiguous across services; insist on an offset and store UTC.
        if value.tzinfo is None:
            raise ValueError("timestamp needs a UTC offset (RFC 3339), e.g. 2026-01-01T00:00:00Z")
        try:
            return value.astimezone(UTC)
        except OverflowError:  # e.g. 0001-01-01T00:00:00+01:00 is before the first representable UTC time
            raise ValueError("timestamp out of range once converted to UTC") from None

    def to_json(self) -> bytes:
        """Serialise to compact UTF-8 JSON bytes (the wire format)."""
        return self.model_dump_json(by_alias=True).encode("utf-8")

    @property
    def key(self) -> bytes:
        """Kafka message key: events of one id always land on one partition."""
        return str(self.event_id).encode()


class ContentPart(BaseModel):
    """One part of a multimodal message (version 2): ``text`` carries its text; any other type
    (``image``, ``audio``, ``file``, or whatever a provider sends) is recorded by MIME type, size
    and SHA-256 of its bytes, the bytes themselves (``data``, base64) only when
    ``ATALAIA_EVENT_KEEP_MEDIA`` is set. See :mod:`atalaia.content`."""

    model_config = ConfigDict(extra="allow")
    type: str = Field(min_length=1, max_length=64)
    text: str | None = None
    mime_type: str | None = Field(default=None, max_length=200)
    size_bytes: int | None = Field(default=None, ge=0)
    sha256: str | None = Field(default=None, max_length=64)
    uri: str | None = Field(default=None, description="where the media lives (an http(s) URL or file id), if given")
    data: str | None = Field(default=None, description="base64 bytes, only with ATALAIA_EVENT_KEEP_MEDIA")


class ChatMessage(BaseModel):
    """One message of an OpenAI-style chat: ``content`` is text, or (version 2) a list of parts."""

    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[ContentPart]

    @property
    def text(self) -> str:
        """The message's text: ``content`` itself, or its text parts joined by newlines."""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(p.text for p in self.content if p.type == "text" and p.text)


class RetrievedPassage(BaseModel):
    """A passage retrieved by RAG and put into the prompt."""

    model_config = ConfigDict(extra="allow")
    id: str
    text: str = ""
    score: float | None = None


class InferenceEvent(_Event):
    """One request to and response from a production LLM service."""

    type: Literal["inference"] = "inference"
    # Bounds are those of the columns the worker writes (a value a column refuses would be
    # retried forever): 200-character names, 32-bit token counts, finite numbers.
    service: str = Field(min_length=1, max_length=200)
    model_version: str = Field(min_length=1, max_length=200)
    # Version 2: may be empty when the producer did not capture content (an OpenTelemetry span
    # without messages); such an event gets operational metrics only.
    messages: list[ChatMessage] = Field(default_factory=list)
    response: str
    context: list[RetrievedPassage] = Field(default_factory=list)
    latency_ms: float = Field(ge=0, allow_inf_nan=False)
    prompt_tokens: int = Field(ge=0, le=MAX_INT32)
    completion_tokens: int = Field(ge=0, le=MAX_INT32)
    cost: float = Field(ge=0, allow_inf_nan=False)
    cache_hit: bool = False
    reference: str | None = None
    request_id: str | None = Field(default=None, max_length=200)
    metadata: dict[str, Any] = Field(default_factory=dict)
    # Schema version 2 (all optional, so version-1 events still parse):
    time_to_first_token_ms: float | None = Field(
        default=None, ge=0, allow_inf_nan=False, description="time from request to the first generated token"
    )
    provider: str | None = Field(default=None, max_length=200, description="model provider, e.g. atalaia, openai")
    finish_reason: str | None = Field(default=None, max_length=64, description="why generation stopped")
    caller: str | None = Field(
        default=None, max_length=200, description="the calling service or tenant (API key name), not the end user"
    )
    subject_id: str | None = Field(
        default=None, max_length=200, description="keyed hash of the end user (data subject); never the raw id"
    )


class FeedbackEvent(_Event):
    """A user's judgement of an earlier response, optionally with a corrected answer."""

    type: Literal["feedback"] = "feedback"
    inference_event_id: uuid.UUID
    rating: int | None = Field(default=None, ge=-1, le=1, description="-1 bad, 0 neutral, 1 good")
    corrected_answer: str | None = None
    comment: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    caller: str | None = Field(default=None, max_length=200, description="the calling service or tenant (version 2)")
    subject_id: str | None = Field(default=None, max_length=200, description="keyed hash of the end user (version 2)")


class MetricEvent(_Event):
    """One score of one event (``value``), or the error that prevented computing it."""

    type: Literal["metric"] = "metric"
    source_event_id: uuid.UUID
    source_ts: datetime
    service: str
    model_version: str
    name: str = Field(min_length=1, max_length=64)
    value: float | None = None
    error: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)

    @staticmethod
    def id_for(source_event_id: uuid.UUID, name: str) -> uuid.UUID:
        """Deterministic id, so a recomputed metric is recognisably the same event."""
        return uuid.uuid5(source_event_id, name)

    @classmethod
    def of(
        cls,
        event: InferenceEvent,
        name: str,
        value: float | None = None,
        error: str | None = None,
        labels: dict[str, str] | None = None,
    ) -> MetricEvent:
        """The metric ``name`` of an inference event, with its deterministic id."""
        return cls(
            event_id=cls.id_for(event.event_id, name),
            source_event_id=event.event_id,
            source_ts=event.ts,
            service=event.service,
            model_version=event.model_version,
            name=name,
            value=value,
            error=error,
            labels=labels or {},
        )


class MetricScore(BaseModel):
    """One metric of a scored event inside a :class:`MetricBatchEvent`."""

    model_config = ConfigDict(extra="allow")
    name: str = Field(min_length=1, max_length=64)
    value: float | None = None
    error: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)


class ScoredEvent(BaseModel):
    """The metrics of one inference event inside a :class:`MetricBatchEvent`."""

    model_config = ConfigDict(extra="allow")
    source_event_id: uuid.UUID
    source_ts: datetime
    service: str
    model_version: str
    metrics: list[MetricScore]


class MetricBatchEvent(_Event):
    """The metrics of a scored batch in one message (the compact form of :class:`MetricEvent`).

    The worker publishes one per scored batch (at most ``MAX_EVENTS_PER_METRIC_BATCH`` events
    each) instead of one message per metric: 200 events x 6 metrics were 1,200 messages.
    Readers of the ``metrics`` topic take both forms (:func:`parse_metrics`); each metric keeps
    its deterministic id, so a metric read in either form is recognisably the same.
    """

    type: Literal["metric_batch"] = "metric_batch"
    events: list[ScoredEvent] = Field(min_length=1)

    @staticmethod
    def pack_json(metrics: Sequence[MetricEvent]) -> list[tuple[bytes, bytes]]:
        """``(key, value)`` messages of ``metrics``: grouped by source event, at most
        ``MAX_EVENTS_PER_METRIC_BATCH`` events each, serialised straight from dicts (building
        a model per metric would cost more than the messages it saves)."""
        grouped: dict[uuid.UUID, dict[str, Any]] = {}
        for m in metrics:
            scored = grouped.get(m.source_event_id)
            if scored is None:
                scored = grouped[m.source_event_id] = {
                    "source_event_id": str(m.source_event_id),
                    "source_ts": m.source_ts.isoformat(),
                    "service": m.service,
                    "model_version": m.model_version,
                    "metrics": [],
                }
            scored["metrics"].append({"name": m.name, "value": m.value, "error": m.error, "labels": m.labels})
        items = list(grouped.values())
        now = utcnow().isoformat()
        out = []
        for i in range(0, len(items), MAX_EVENTS_PER_METRIC_BATCH):
            chunk = items[i : i + MAX_EVENTS_PER_METRIC_BATCH]
            first = chunk[0]["source_event_id"]
            # Deterministic id: a batch republished after a crash is the same message.
            event_id = uuid.uuid5(uuid.UUID(first), f"metric_batch:{len(chunk)}")
            message = {
                "schema_version": SCHEMA_VERSION,
                "event_id": str(event_id),
                "ts": now,
                "type": "metric_batch",
                "events": chunk,
            }
            out.append((first.encode(), json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()))
        return out

    @classmethod
    def pack(cls, metrics: Sequence[MetricEvent]) -> list[MetricBatchEvent]:
        """The messages of :meth:`pack_json` as models."""
        return [cls.model_validate_json(value) for _, value in MetricBatchEvent.pack_json(metrics)]

    def expand(self) -> list[MetricEvent]:
        """The batch as one :class:`MetricEvent` per metric (already validated: no re-validation)."""
        out = []
        for scored in self.events:
            for m in scored.metrics:
                out.append(
                    MetricEvent.model_construct(
                        schema_version=self.schema_version,
                        event_id=MetricEvent.id_for(scored.source_event_id, m.name),
                        ts=self.ts,
                        type="metric",
                        source_event_id=scored.source_event_id,
                        source_ts=scored.source_ts,
                        service=scored.service,
                        model_version=scored.model_version,
                        name=m.name,
                        value=m.value,
                        error=m.error,
                        labels=m.labels,
                    )
                )
        return out


class AlertEvent(_Event):
    """A transition of an alert's lifecycle (pending → firing → resolved)."""

    type: Literal["alert"] = "alert"
    alert_id: uuid.UUID
    fingerprint: str
    rule: str
    state: Literal["pending", "firing", "resolved"]
    severity: str = "warning"
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    value: float | None = None
    threshold: float | None = None
    action: str | None = None
    started_at: datetime


class ModelEvent(_Event):
    """A model lifecycle command: serve this version (``deploy``) or go back (``rollback``)."""

    type: Literal["deploy", "rollback"]
    model_version: str
    artefact_path: str | None = None
    previous_version: str | None = None
    reason: str | None = None
    #: ``v1=<hex HMAC-SHA256>`` when ATALAIA_MODEL_EVENTS_SECRET is set (atalaia/model_signing.py).
    signature: str | None = None


class DeadLetterEvent(_Event):
    """A message that could not be processed, with the reason and its original bytes."""

    type: Literal["deadletter"] = "deadletter"
    reason: str
    field: str | None = None
    source_topic: str
    source_partition: int | None = None
    source_offset: int | None = None
    original: str = Field(description="the original message: UTF-8 text, or base64 when not valid UTF-8")
    original_encoding: Literal["utf-8", "base64"] = "utf-8"
    consumer: str | None = None


Event = Annotated[
    InferenceEvent | FeedbackEvent | MetricEvent | MetricBatchEvent | AlertEvent | ModelEvent | DeadLetterEvent,
    Field(discriminator="type"),
]
EVENT_TYPES: dict[str, type[_Event]] = {
    "inference": InferenceEvent,
    "feedback": FeedbackEvent,
    "metric": MetricEvent,
    "metric_batch": MetricBatchEvent,
    "alert": AlertEvent,
    "deploy": ModelEvent,
    "rollback": ModelEvent,
    "deadletter": DeadLetterEvent,
}


def _first_error(exc: ValidationError, kind: str) -> EventError:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"] if p not in EVENT_TYPES)
    # Drop pydantic's "Value error, " prefix: the reader wants the rule, not the mechanism.
    msg = str(err["msg"]).removeprefix("Value error, ")
    more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return EventError(f"invalid {kind} event: field '{loc}': {msg}{more}", field=loc or None)


# A JSON escape of NUL or of a UTF-16 surrogate. Paired surrogates encode an emoji and are fine; a
# lone one, or NUL, parses into a string that PostgreSQL (and, for surrogates, every encoder)
# cannot store, so the event would be retried forever and block its partition.
_UNSTORABLE_ESCAPE = re.compile(r"\\u(?:[dD][89a-fA-F][0-9a-fA-F]{2}|0000)")


def check_storable_text(data: Any, what: str = "message") -> None:
    """Raise :class:`EventError` if any string (key or value) in ``data`` holds a NUL character
    or a lone UTF-16 surrogate: text no database column or JSON encoder can take.

    >>> check_storable_text({"a": ["fine", "\U0001f600"]})
    >>> check_storable_text({"a": "x" + chr(0)}, "request")
    Traceback (most recent call last):
    ...
    atalaia.events.EventError: request holds a NUL character (\\u0000), which text columns cannot store
    """
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                raise EventError(f"{what} holds a NUL character (\\u0000), which text columns cannot store")
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise EventError(f"{what} holds a lone UTF-16 surrogate (\\ud800-\\udfff): not Unicode text") from None
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)


def parse_event(raw: bytes | str, expected: type[_Event] | None = None) -> Any:
    """Parse one wire message into its event model.

    Parameters
    ----------
    raw
        The message value (UTF-8 JSON object).
    expected
        If given, the message must be of this event class.

    Raises
    ------
    EventError
        With a reason naming the offending field; never any other exception.
    """
    if isinstance(raw, bytes):
        if len(raw) > MAX_EVENT_BYTES:
            raise EventError(f"message of {len(raw)} bytes exceeds the {MAX_EVENT_BYTES}-byte limit")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise EventError(f"message is not valid UTF-8 (byte {exc.start})") from None
    else:
        text = raw
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise EventError(f"message is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise EventError(f"event must be a JSON object, got {type(data).__name__}")
    if _UNSTORABLE_ESCAPE.search(text) or not isinstance(raw, bytes):
        check_storable_text(data)
    kind = data.get("type")
    if not isinstance(kind, str) or kind not in EVENT_TYPES:  # a list or object is unhashable
        raise EventError(f"unknown or missing event type {kind!r:.80}; expected one of {sorted(EVENT_TYPES)}", "type")
    for envelope_field in ENVELOPE_FIELDS:
        # Defaults exist for building events in code; on the wire the envelope must be explicit.
        if envelope_field not in data:
            raise EventError(f"invalid {kind} event: field '{envelope_field}': Field required", envelope_field)
    cls = EVENT_TYPES[kind]
    if expected is not None and cls is not expected:
        raise EventError(
            f"expected a {expected.model_fields['type'].default or expected.__name__} event, got {kind!r}", "type"
        )
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise _first_error(exc, str(kind)) from None
    except RecursionError:
        raise EventError("event is nested too deeply") from None


WIRE_RULES = (
    "On the wire, `type`, `schema_version`, `event_id` and `ts` are required (the Python models "
    "fill them in code; the parser does not). Not expressible in JSON Schema, also enforced: no "
    "string (key or value) may hold NUL (U+0000) or a lone UTF-16 surrogate, and a message is at "
    f"most {MAX_EVENT_BYTES} bytes of UTF-8 JSON; a timestamp must stay within years 1-9999 once converted to UTC."
)


def wire_schema(cls: type[_Event]) -> dict[str, Any]:
    """The JSON Schema of ``cls`` as :func:`parse_event` accepts it on the wire.

    Pydantic's schema marks fields with defaults as optional; the parser requires ``type`` and the
    envelope (``ENVELOPE_FIELDS``), and reads only the supported schema versions.
    """
    schema = cls.model_json_schema()
    schema["required"] = sorted({*schema.get("required", []), "type", *ENVELOPE_FIELDS})
    props = schema["properties"]
    props["schema_version"] = {
        "enum": sorted(SUPPORTED_SCHEMA_VERSIONS),
        "title": "Schema Version",
        "type": "integer",
        "description": f"{SCHEMA_VERSION} for new events; every listed version is still read",
    }
    for name in ("type", "schema_version", "event_id", "ts"):
        props[name].pop("default", None)
    schema["description"] = f"{schema.get('description', '').strip()} {WIRE_RULES}".strip()
    return schema


def export_json_schemas(directory: Path) -> list[Path]:
    """Write one JSON Schema file per event type into ``directory`` (``docs/events/``)."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for cls in (InferenceEvent, FeedbackEvent, MetricEvent, MetricBatchEvent, AlertEvent, ModelEvent, DeadLetterEvent):
        name = cls.__name__.removesuffix("Event").lower()
        path = directory / f"{name}.schema.json"
        schema = wire_schema(cls)
        schema["$id"] = f"https://atalaia.dev/schemas/v{SCHEMA_VERSION}/{name}.schema.json"
        path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
        written.append(path)
    return written


def parse_metrics(raw: bytes | str) -> list[MetricEvent]:
    """Parse one message of the ``metrics`` topic, either form, into its metric events.

    >>> import uuid
    >>> ev = MetricEvent(source_event_id=uuid.uuid4(), source_ts=utcnow(), service="s",
    ...     model_version="v", name="latency_ms", value=1.0)
    >>> [m.name for m in parse_metrics(MetricBatchEvent.pack([ev])[0].to_json())], len(parse_metrics(ev.to_json()))
    (['latency_ms'], 1)
    """
    event = parse_event(raw)
    if isinstance(event, MetricEvent):
        return [event]
    if isinstance(event, MetricBatchEvent):
        return event.expand()
    raise EventError(f"expected a metric or metric_batch event, got {event.type!r}", "type")
