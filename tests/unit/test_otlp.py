"""The OTLP receiver: protobuf (from the real OpenTelemetry SDK and OTLP exporter) and JSON,
gzip, current and older GenAI conventions, spans joined with their log records, errors."""

from __future__ import annotations

import gzip
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from fastapi.testclient import TestClient

from atalaia.events import InferenceEvent, parse_event
from atalaia.settings import Settings
from otlp import assembler as assembler_module
from otlp.app import create_app
from otlp.assembler import Assembler
from otlp.decode import LogRecord, Span
from otlp.genai import SpanContent
from tests.conftest import free_port

TRACE = "5b8efff798038103d269b633813fc60c"
SPAN = "eee19b7ec3c1b174"


def _attr(key: str, value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        v: dict[str, Any] = {"boolValue": value}
    elif isinstance(value, int):
        v = {"intValue": str(value)}  # OTLP/JSON writes 64-bit integers as strings
    elif isinstance(value, float):
        v = {"doubleValue": value}
    elif isinstance(value, list):
        v = {"arrayValue": {"values": [{"stringValue": x} for x in value]}}
    else:
        v = {"stringValue": value}
    return {"key": key, "value": v}


def _traces(attrs: dict[str, Any], events: list[dict[str, Any]] | None = None, **span: Any) -> dict[str, Any]:
    return {
        "resourceSpans": [
            {
                "resource": {"attributes": [_attr("service.name", "support-bot")]},
                "scopeSpans": [
                    {
                        "scope": {"name": "test"},
                        "spans": [
                            {
                                "traceId": TRACE,
                                "spanId": SPAN,
                                "name": "chat gpt-4o-mini",
                                "kind": 3,
                                "startTimeUnixNano": "1765000000000000000",
                                "endTimeUnixNano": "1765000001250000000",
                                "attributes": [_attr(k, v) for k, v in attrs.items()],
                                "events": events or [],
                                "status": {},
                                **span,
                            },
                            {
                                "traceId": TRACE,
                                "spanId": "0000000000000001",
                                "name": "GET /orders",
                                "startTimeUnixNano": "1765000000000000000",
                                "endTimeUnixNano": "1765000000100000000",
                                "attributes": [_attr("http.request.method", "GET")],
                            },
                        ],
                    }
                ],
            }
        ]
    }


def _logs(records: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "resourceLogs": [
            {
                "resource": {"attributes": [_attr("service.name", "support-bot")]},
                "scopeLogs": [{"scope": {"name": "test"}, "logRecords": records}],
            }
        ]
    }


def _kv(d: dict[str, Any]) -> dict[str, Any]:
    values = []
    for k, v in d.items():
        if isinstance(v, dict):
            values.append({"key": k, "value": _kv(v)})
        else:
            values.append({"key": k, "value": {"stringValue": str(v)} if not isinstance(v, int) else {"intValue": v}})
    return {"kvlistValue": {"values": values}}


CURRENT = {
    "gen_ai.operation.name": "chat",
    "gen_ai.provider.name": "openai",
    "gen_ai.request.model": "gpt-4o-mini",
    "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
    "gen_ai.response.id": "chatcmpl-123",
    "gen_ai.response.finish_reasons": ["stop"],
    "gen_ai.usage.input_tokens": 1000,
    "gen_ai.usage.output_tokens": 2000,
    "gen_ai.conversation.id": "conv-9",
    "gen_ai.response.time_to_first_chunk": 0.25,
    "gen_ai.request.temperature": 0.2,
    "gen_ai.system_instructions": json.dumps([{"type": "text", "content": "Be brief."}]),
    "gen_ai.input.messages": json.dumps(
        [
            {
                "role": "user",
                "parts": [
                    {"type": "text", "content": "What is in this picture?"},
                    {"type": "blob", "modality": "image", "mime_type": "image/png", "content": "aGVsbG8="},
                ],
            }
        ]
    ),
    "gen_ai.output.messages": json.dumps(
        [{"role": "assistant", "parts": [{"type": "text", "content": "A cat."}], "finish_reason": "stop"}]
    ),
}


@pytest.fixture
def receiver(tmp_path: Any) -> Iterator[tuple[TestClient, list[InferenceEvent]]]:
    events: list[InferenceEvent] = []
    app = create_app(Settings(home=tmp_path), events.append, wait_s=0.5)
    with TestClient(app) as client:
        yield client, events


def _post(client: TestClient, path: str, body: dict[str, Any], gz: bool = False) -> Any:
    raw = json.dumps(body).encode()
    headers = {"content-type": "application/json"}
    if gz:
        raw, headers["content-encoding"] = gzip.compress(raw), "gzip"
    return client.post(path, content=raw, headers=headers)


def test_current_conventions_from_otlp_json(receiver: Any) -> None:
    client, events = receiver
    r = _post(client, "/v1/traces", _traces(CURRENT), gz=True)
    assert r.status_code == 200 and r.headers["content-type"] == "application/json" and r.json() == {}
    assert len(events) == 1
    ev = parse_event(events[0].to_json())  # what the worker will read
    assert ev.service == "support-bot" and ev.model_version == "gpt-4o-mini-2024-07-18"
    assert ev.provider == "openai" and ev.finish_reason == "stop" and ev.request_id == "chatcmpl-123"
    assert (ev.prompt_tokens, ev.completion_tokens) == (1000, 2000)
    assert ev.latency_ms == pytest.approx(1250.0) and ev.time_to_first_token_ms == pytest.approx(250.0)
    assert ev.cost == pytest.approx(0.00015 + 2 * 0.0006)  # the shipped price of gpt-4o-mini
    assert ev.metadata["trace_id"] == TRACE and ev.metadata["span_id"] == SPAN  # hex, as sent
    assert ev.metadata["conversation_id"] == "conv-9" and ev.metadata["request"] == {"temperature": 0.2}
    assert [m.role for m in ev.messages] == ["system", "user"] and ev.messages[0].content == "Be brief."
    text, image = ev.messages[1].content
    assert text.text == "What is in this picture?"
    assert (image.type, image.mime_type, image.size_bytes, image.data) == ("image", "image/png", 5, None)
    assert image.sha256 == "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    assert ev.response == "A cat."
    stats = client.get("/healthz").json()["stats"]
    assert (stats["genai_spans"], stats["skipped_spans"], stats["events"]) == (1, 1, 1)
    # An exporter retry of the same span is the same event (the worker stores it once).
    _post(client, "/v1/traces", _traces(CURRENT))
    assert events[1].event_id == events[0].event_id


def test_older_conventions_indexed_attributes(receiver: Any) -> None:
    client, events = receiver
    attrs = {
        "gen_ai.system": "anthropic",
        "llm.request.type": "chat",
        "gen_ai.request.model": "claude-3-5-haiku-20241022",
        "gen_ai.usage.prompt_tokens": 40,
        "gen_ai.usage.completion_tokens": 8,
        "gen_ai.prompt.0.role": "system",
        "gen_ai.prompt.0.content": "You answer HR questions.",
        "gen_ai.prompt.1.role": "user",
        "gen_ai.prompt.1.content": "How many vacation days?",
        "gen_ai.completion.0.role": "assistant",
        "gen_ai.completion.0.content": "Thirty.",
        "gen_ai.completion.0.finish_reason": "end_turn",
    }
    assert _post(client, "/v1/traces", _traces(attrs)).status_code == 200
    (ev,) = events
    assert ev.provider == "anthropic" and ev.model_version == "claude-3-5-haiku-20241022"
    assert [(m.role, m.content) for m in ev.messages] == [
        ("system", "You answer HR questions."),
        ("user", "How many vacation days?"),
    ]
    assert ev.response == "Thirty." and ev.finish_reason == "end_turn"
    assert (ev.prompt_tokens, ev.completion_tokens) == (40, 8)
    assert ev.cost == pytest.approx(0.04 * 0.0008 + 0.008 * 0.004)


def test_v1_27_span_events(receiver: Any) -> None:
    client, events = receiver
    attrs = {"gen_ai.operation.name": "chat", "gen_ai.system": "openai", "gen_ai.request.model": "gpt-4o"}
    span_events = [
        {
            "name": "gen_ai.content.prompt",
            "attributes": [_attr("gen_ai.prompt", json.dumps([{"role": "user", "content": "hi"}]))],
        },
        {
            "name": "gen_ai.content.completion",
            "attributes": [_attr("gen_ai.completion", json.dumps([{"role": "assistant", "content": "hello"}]))],
        },
    ]
    _post(client, "/v1/traces", _traces(attrs, span_events))
    (ev,) = events
    assert ev.messages[0].content == "hi" and ev.response == "hello"


def test_per_message_log_events_before_and_after_their_span(receiver: Any) -> None:
    client, events = receiver
    attrs = {"gen_ai.operation.name": "chat", "gen_ai.system": "openai", "gen_ai.request.model": "gpt-4o"}
    records = [
        {"traceId": TRACE, "spanId": SPAN, "eventName": "gen_ai.user.message", "body": _kv({"content": "Hello?"})},
        {
            "traceId": TRACE,
            "spanId": SPAN,
            "attributes": [_attr("event.name", "gen_ai.choice")],  # the older way to name an event
            "body": _kv({"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "Hi!"}}),
        },
        {"traceId": TRACE, "spanId": SPAN, "body": {"stringValue": "an ordinary log line"}},
    ]
    # Log records first: they wait for their span.
    assert _post(client, "/v1/logs", _logs(records)).status_code == 200
    _post(client, "/v1/traces", _traces(attrs))
    (ev,) = events
    assert ev.messages[0].content == "Hello?" and ev.response == "Hi!" and ev.finish_reason == "stop"
    # Span first (from a service known to send log records): it waits for them.
    other = "1111111111111111"
    _post(client, "/v1/traces", _traces(attrs, spanId=other))
    assert len(events) == 1 and client.get("/healthz").json()["waiting"] == 1
    late = [dict(r, spanId=other) for r in records[:2]]
    _post(client, "/v1/logs", _logs(late))
    assert len(events) == 2 and events[1].response == "Hi!"
    # Span first and no record ever comes: emitted without content once the wait is over.
    _post(client, "/v1/traces", _traces(attrs, spanId="2222222222222222"))
    deadline = time.monotonic() + 5
    while len(events) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert events[2].messages == [] and events[2].response == ""


def test_operation_details_event(receiver: Any) -> None:
    client, events = receiver
    attrs = {k: v for k, v in CURRENT.items() if not k.startswith(("gen_ai.input", "gen_ai.output", "gen_ai.system_"))}
    details = {
        "traceId": TRACE,
        "spanId": SPAN,
        "eventName": "gen_ai.client.inference.operation.details",
        "attributes": [
            _attr("gen_ai.input.messages", json.dumps([{"role": "user", "parts": [{"type": "text", "content": "Q"}]}])),
            _attr(
                "gen_ai.output.messages",
                json.dumps([{"role": "assistant", "parts": [{"type": "text", "content": "A"}]}]),
            ),
        ],
    }
    _post(client, "/v1/logs", _logs([details]))
    _post(client, "/v1/traces", _traces(attrs))
    (ev,) = events
    assert ev.messages[0].content == "Q" and ev.response == "A"


def test_no_content_still_gives_an_event_and_other_spans_are_skipped(receiver: Any) -> None:
    client, events = receiver
    attrs = {k: v for k, v in CURRENT.items() if not k.startswith(("gen_ai.input", "gen_ai.output", "gen_ai.system_"))}
    _post(client, "/v1/traces", _traces(attrs))
    embeddings = {"gen_ai.operation.name": "embeddings", "gen_ai.provider.name": "openai"}
    _post(client, "/v1/traces", _traces(embeddings))
    # Without content the span waits (wait_s = 0.5 s here) for log records that may carry it.
    deadline = time.monotonic() + 5
    while not events and time.monotonic() < deadline:
        time.sleep(0.05)
    (ev,) = events
    assert ev.messages == [] and ev.response == "" and ev.metadata["content_captured"] is False
    assert ev.prompt_tokens == 1000 and ev.provider == "openai"
    stats = client.get("/healthz").json()["stats"]
    assert stats["skipped_spans"] == 3 and stats["events_without_content"] == 1


def test_errors_and_unstorable_text(receiver: Any) -> None:
    client, events = receiver
    r = client.post("/v1/traces", content=b"\xff\x00garbage", headers={"content-type": "application/x-protobuf"})
    assert r.status_code == 400 and r.headers["content-type"] == "application/x-protobuf"
    assert b"ExportTraceServiceRequest" in r.content
    r = client.post("/v1/traces", content=b"{nope", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "JSON" in r.json()["message"]
    assert client.post("/v1/traces", content=b"x", headers={"content-type": "text/plain"}).status_code == 415
    r = client.post(
        "/v1/traces", content=b"not gzip", headers={"content-type": "application/json", "content-encoding": "gzip"}
    )
    assert r.status_code == 400
    attrs = dict(
        CURRENT,
        **{
            "gen_ai.output.messages": json.dumps(
                [{"role": "assistant", "parts": [{"type": "text", "content": "a\u0000b\ud800"}]}]
            )
        },
    )
    assert _post(client, "/v1/traces", _traces(attrs)).status_code == 200
    parse_event(events[0].to_json())  # storable: NUL and the lone surrogate were replaced
    assert events[0].response.startswith("a\ufffdb")


def test_real_sdk_and_otlp_exporter_protobuf_gzip(tmp_path: Any) -> None:
    from opentelemetry.exporter.otlp.proto.http import Compression
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    events: list[InferenceEvent] = []
    app = create_app(Settings(home=tmp_path), events.append)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.02)
        provider = TracerProvider(resource=Resource.create({"service.name": "my-app"}))
        exporter = OTLPSpanExporter(endpoint=f"http://127.0.0.1:{port}/v1/traces", compression=Compression.Gzip)
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        tracer = provider.get_tracer("test")
        with tracer.start_as_current_span("chat mistral-small-latest") as span:
            for key, value in CURRENT.items():
                span.set_attribute(key, value)
            span.set_attribute("gen_ai.provider.name", "mistral_ai")
            span.set_attribute("gen_ai.response.model", "mistral-small-latest")
        with tracer.start_as_current_span("SELECT orders"):
            pass
        provider.shutdown()
    finally:
        server.should_exit = True
        thread.join(10)
    (ev,) = events
    assert ev.service == "my-app" and ev.provider == "mistral_ai" and ev.response == "A cat."
    assert ev.cost == pytest.approx(1 * 0.0001 + 2 * 0.0003)
    assert len(ev.metadata["trace_id"]) == 32  # hex trace id from protobuf bytes


# -- the assembler: spans and log records in either order, whatever the service ---------------
class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _span(span_id: str = SPAN, service: str = "fresh-app", **attrs: Any) -> Span:
    base = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o"}
    return Span(
        trace_id=TRACE,
        span_id=span_id,
        name="chat gpt-4o",
        start_unix_nano=1765000000000000000,
        end_unix_nano=1765000001000000000,
        attributes={**base, **attrs},
        resource={"service.name": service},
    )


def _record(name: str, body: Any, span_id: str = SPAN, service: str = "fresh-app") -> LogRecord:
    return LogRecord(name, TRACE, span_id, 0, {}, body, {"service.name": service})


USER = ("gen_ai.user.message", {"content": "How many vacation days do I get?"})
CHOICE = ("gen_ai.choice", {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "30."}})


def _assembler(wait_s: float = 2.0) -> tuple[Assembler, list[InferenceEvent], _Clock]:
    events: list[InferenceEvent] = []
    clock = _Clock()
    return Assembler(events.append, "", lambda _m: (0.0, 0.0), wait_s=wait_s, clock=clock), events, clock


def test_span_before_its_records_from_a_service_never_seen() -> None:
    # The documented snippet in EVENT_ONLY mode flushes spans, then logs, and exits: its first
    # (and only) run must keep its content, as must any app's first batch after a restart.
    asm, events, clock = _assembler()
    asm.add_spans([_span()], 0)
    assert events == [] and asm.waiting == 1
    clock.now += 0.5
    asm.add_logs([_record(*USER), _record(*CHOICE)], 0)
    (ev,) = events
    assert ev.metadata["content_captured"] is True and ev.service == "fresh-app"
    assert ev.messages[0].content == "How many vacation days do I get?" and ev.response == "30."
    assert asm.waiting == 0 and asm.stats.events_without_content == 0


def test_records_split_over_requests_join_their_span_in_either_order() -> None:
    asm, events, clock = _assembler()
    # Prompt record first, span next: the span waits for the answer's record.
    asm.add_logs([_record(*USER)], 0)
    asm.add_spans([_span()], 0)
    assert events == []
    asm.add_logs([_record(*CHOICE)], 0)
    (ev,) = events
    assert ev.messages[0].text.startswith("How many") and ev.response == "30." and ev.finish_reason == "stop"
    # Span first, then the prompt, then the answer (two log exports).
    asm.add_spans([_span("1111111111111111")], 0)
    asm.add_logs([_record(*USER, span_id="1111111111111111")], 0)
    assert len(events) == 1
    asm.add_logs([_record(*CHOICE, span_id="1111111111111111")], 0)
    assert len(events) == 2 and events[1].messages and events[1].response == "30."
    # Only a prompt ever comes: the span goes with it when its wait is over.
    asm.add_spans([_span("2222222222222222")], 0)
    asm.add_logs([_record(*USER, span_id="2222222222222222")], 0)
    clock.now += 2.0
    asm.expire()
    assert len(events) == 3 and events[2].messages and events[2].response == ""


def test_an_exporter_retry_of_a_waiting_span_keeps_its_records_and_its_deadline() -> None:
    asm, events, clock = _assembler(wait_s=2.0)
    asm.add_spans([_span()], 0)
    asm.add_logs([_record(*USER)], 0)
    clock.now += 1.5
    asm.add_spans([_span()], 0)  # the exporter sends the same span again
    assert events == [] and asm.waiting == 1
    asm.add_logs([_record(*CHOICE)], 0)
    (ev,) = events
    assert ev.messages[0].text.startswith("How many") and ev.response == "30."
    # Without its answer, a retried span still goes at its first deadline.
    asm.add_spans([_span("1111111111111111")], 0)
    clock.now += 1.5
    asm.add_spans([_span("1111111111111111")], 0)
    clock.now += 0.5
    asm.expire()
    assert len(events) == 2


def test_span_without_content_waits_the_grace_period_and_no_longer() -> None:
    asm, events, clock = _assembler(wait_s=2.0)
    asm.add_spans([_span(service="never-sends-logs")], 0)
    clock.now += 1.9
    asm.expire()
    assert events == []
    clock.now += 0.1
    asm.expire()
    (ev,) = events
    assert ev.metadata["content_captured"] is False and asm.waiting == 0
    # A span with content, or any span with wait_s = 0, goes at once.
    asm.add_spans([_span("1111111111111111", **{"gen_ai.input.messages": '[{"role":"user","parts":[]}]'})], 0)
    assert len(events) == 2
    now, _, _ = _assembler(wait_s=0)
    now.add_spans([_span()], 0)
    assert now.stats.events == 1


def test_late_records_are_counted_not_kept_and_flush_keeps_what_arrived() -> None:
    asm, events, clock = _assembler(wait_s=1.0)
    asm.add_spans([_span()], 0)
    clock.now += 1.0
    asm.expire()
    asm.add_logs([_record(*USER), _record(*CHOICE)], 0)
    assert len(events) == 1 and asm.stats.late_log_records == 2
    assert not asm._logs  # not waiting 120 s for a span that has gone
    # At shutdown a waiting span goes with the records it has.
    asm.add_spans([_span("1111111111111111")], 0)
    asm.add_logs([_record(*USER, span_id="1111111111111111")], 0)
    asm.flush()
    assert len(events) == 2 and events[1].messages and asm.waiting == 0


def test_waiting_spans_and_records_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(assembler_module, "MAX_PENDING_SPANS", 2)
    monkeypatch.setattr(assembler_module, "MAX_RECORDS_PER_SPAN", 3)
    asm, events, _ = _assembler()
    asm.add_spans([_span(f"{i:016x}") for i in range(1, 4)], 0)
    assert asm.waiting == 2 and len(events) == 1  # the oldest went early, not lost
    asm.add_logs([_record(*USER, span_id="0000000000000002") for _ in range(10)], 0)
    asm.flush()
    assert len(events) == 3 and len(events[1].messages) == 3


# -- message parts, older events in attribute form, bad numbers --------------------------------
def _inputs(parts: list[dict[str, Any]]) -> Any:
    content = SpanContent()
    content.add_current({"gen_ai.input.messages": json.dumps([{"role": "user", "parts": parts}])}, False)
    (message,) = content.inputs
    return message


def test_parts_are_read_whatever_the_first_part_is() -> None:
    uri = {"type": "uri", "modality": "image", "mime_type": "image/png", "uri": "https://x/a.png"}
    message = _inputs([uri, {"type": "text", "content": "What is in this picture?"}])
    assert message.text == "What is in this picture?"
    image, text = message.content
    assert (image.type, image.mime_type, image.uri) == ("image", "image/png", "https://x/a.png")
    assert (text.type, text.text) == ("text", "What is in this picture?")
    blob = {"type": "blob", "modality": "audio", "mime_type": "audio/wav", "content": "aGVsbG8="}
    audio, text = _inputs([blob, {"type": "text", "content": "Transcribe"}]).content
    assert (audio.type, audio.size_bytes, text.text) == ("audio", 5, "Transcribe")
    (call,) = _inputs([{"type": "tool_call", "id": "call_1", "name": "lookup", "arguments": {"q": "x"}}]).content
    assert (call.type, call.name, call.id, json.loads(call.text)) == ("tool_call", "lookup", "call_1", {"q": "x"})
    (resp,) = _inputs([{"type": "tool_call_response", "id": "call_1", "response": {"days": 30}}]).content
    assert (resp.type, resp.id, json.loads(resp.text)) == ("tool_call_response", "call_1", {"days": 30})
    (resp,) = _inputs([{"type": "tool_call_response", "id": "c2", "response": "42"}]).content
    assert resp.text == "42"
    server = {"type": "server_tool_call", "id": "s1", "name": "web_search", "server_tool_call": {"query": "q"}}
    (call,) = _inputs([server]).content
    assert (call.name, call.id, json.loads(call.text)) == ("web_search", "s1", {"query": "q"})
    thought, answer = _inputs([{"type": "reasoning", "content": "hmm"}, {"type": "text", "content": "A"}]).content
    assert (thought.type, thought.text, answer.text) == ("reasoning", "hmm", "A")
    (custom,) = _inputs([{"type": "brand_new", "x": 1}]).content
    assert custom.type == "brand_new"
    # OpenAI-style content (older event bodies) is still read as such, first part text or not.
    openai: list[dict[str, Any]] = [
        {"type": "image_url", "image_url": {"url": "https://x/b.png"}},
        {"type": "text", "text": "And this?"},
    ]
    image, text = _inputs(openai).content
    assert (image.type, image.uri, text.text) == ("image", "https://x/b.png", "And this?")


def _span_event(name: str, **attrs: Any) -> dict[str, Any]:
    return {"name": name, "attributes": [_attr(k, v) for k, v in attrs.items()]}


def test_choice_and_message_events_in_attribute_form(receiver: Any) -> None:
    client, events = receiver
    attrs = {"gen_ai.operation.name": "chat", "gen_ai.system": "mistral_ai", "gen_ai.request.model": "mistral-small"}
    parts = json.dumps([{"type": "text", "text": "Look"}, {"type": "image_url", "image_url": {"url": "u"}}])
    span_events = [
        _span_event("gen_ai.user.message", content=parts),
        _span_event("gen_ai.choice", index=1, finish_reason="length", message=json.dumps({"content": "second"})),
        _span_event("gen_ai.choice", index=0, finish_reason="stop", message=json.dumps({"content": "choice ev"})),
    ]
    _post(client, "/v1/traces", _traces(attrs, span_events))
    (ev,) = events
    assert ev.response == "choice ev" and ev.finish_reason == "stop"
    assert ev.messages[0].text == "Look" and ev.messages[0].content[1].type == "image"
    # A message that is not JSON is the answer's text; user text that merely looks like JSON stays text.
    events.clear()
    span_events = [
        _span_event("gen_ai.user.message", content="[1, 2]"),
        _span_event("gen_ai.choice", index=0, message="plain answer"),
    ]
    _post(client, "/v1/traces", _traces(attrs, span_events, spanId="1111111111111111"))
    (ev,) = events
    assert ev.messages[0].content == "[1, 2]" and ev.response == "plain answer"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("gen_ai.response.time_to_first_chunk", float("inf")),
        ("gen_ai.response.time_to_first_chunk", -0.5),
        ("gen_ai.response.time_to_first_chunk", 1e308),  # finite seconds, infinite milliseconds
        ("gen_ai.usage.input_tokens", float("inf")),
        ("gen_ai.usage.input_tokens", -3),
        ("gen_ai.usage.output_tokens", float("nan")),
        ("gen_ai.request.temperature", float("inf")),
        ("gen_ai.request.top_p", float("nan")),
    ],
)
def test_one_bad_optional_number_leaves_its_field_empty(receiver: Any, key: str, value: float) -> None:
    client, events = receiver
    _post(client, "/v1/traces", _traces(dict(CURRENT, **{key: value})))
    (ev,) = events
    parse_event(ev.to_json())  # storable, and what the worker will read
    assert client.get("/healthz").json()["stats"]["invalid_spans"] == 0
    if key == "gen_ai.response.time_to_first_chunk":
        assert ev.time_to_first_token_ms is None
    elif key == "gen_ai.usage.input_tokens":
        assert (ev.prompt_tokens, ev.completion_tokens) == (0, 2000)
    elif key == "gen_ai.usage.output_tokens":
        assert (ev.prompt_tokens, ev.completion_tokens) == (1000, 0)
    elif key == "gen_ai.request.top_p":
        assert ev.metadata["request"] == {"temperature": 0.2}
    else:
        assert "request" not in ev.metadata
    assert ev.response == "A cat."
