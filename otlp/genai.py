"""OpenTelemetry GenAI spans (and their events) to :class:`~atalaia.events.InferenceEvent`.

Reads the current conventions (``gen_ai.provider.name``, ``gen_ai.input.messages``,
``gen_ai.output.messages``, ``gen_ai.system_instructions``, the
``gen_ai.client.inference.operation.details`` event) and the older ones (``gen_ai.system``,
``gen_ai.prompt.N.*`` / ``gen_ai.completion.N.*`` attributes, per-message events
``gen_ai.{system,user,assistant,tool}.message`` / ``gen_ai.choice``, v1.27's
``gen_ai.content.prompt`` / ``gen_ai.content.completion`` span events,
``gen_ai.usage.prompt_tokens`` / ``completion_tokens``). The table in docs/integrations.md
lists every attribute and where it goes.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from datetime import UTC, datetime
from typing import Any

from atalaia.content import openai_content, otel_parts
from atalaia.events import MAX_INT32, ChatMessage, ContentPart, InferenceEvent, scrub
from atalaia.metrics.operational import Price
from otlp.decode import LogRecord, Span

_UNSTORABLE = re.compile(r"\\u(?:[dD][89a-fA-F][0-9a-fA-F]{2}|0000)")

#: ``gen_ai.operation.name`` values that are a model call producing text (Gemini says generate_content).
CHAT_OPERATIONS = frozenset({"chat", "text_completion", "generate_content", "completion"})
#: Older per-message event names and the role each stands for.
MESSAGE_EVENTS = {
    "gen_ai.system.message": "system",
    "gen_ai.user.message": "user",
    "gen_ai.assistant.message": "assistant",
    "gen_ai.tool.message": "tool",
}
DETAILS_EVENT = "gen_ai.client.inference.operation.details"
_ROLES = {"system", "user", "assistant", "tool", "developer"}
_ROLE_ALIASES = {"model": "assistant", "ai": "assistant", "human": "user", "function": "tool"}
#: Namespace of the deterministic event ids: a re-exported span (OTLP retries) is the same event.
SPAN_NAMESPACE = uuid.UUID("5b0f3b9e-8f0e-4a43-9d67-4f3d7a0c2f18")
#: Part types of the OpenTelemetry GenAI message schema; any other type is its ``GenericPart``.
OTEL_PART_TYPES = frozenset(
    {
        "text",
        "reasoning",
        "blob",
        "file",
        "uri",
        "tool_call",
        "tool_call_response",
        "server_tool_call",
        "server_tool_call_response",
    }
)
#: Part types that only OpenAI-style content uses (older per-message events carry such content).
OPENAI_PART_TYPES = frozenset(
    {"image_url", "input_image", "input_audio", "input_text", "output_text", "input_file", "refusal"}
)
#: Events that carry a call's output: once one is in, the call's log records are all in (an
#: instrumentation records the prompt before the answer, and exporters keep their order).
OUTPUT_EVENTS = frozenset({"gen_ai.choice", DETAILS_EVENT})
_REQUEST_ATTRS = {
    "gen_ai.request.temperature": "temperature",
    "gen_ai.request.max_tokens": "max_tokens",
    "gen_ai.request.top_p": "top_p",
    "gen_ai.request.seed": "seed",
    "gen_ai.request.stop_sequences": "stop",
    "gen_ai.output.type": "output_type",
}


def is_chat_span(attrs: dict[str, Any]) -> bool:
    """Whether a GenAI span is a chat/completion call (embeddings, tools and agents are not)."""
    op = attrs.get("gen_ai.operation.name")
    if op is None:  # OpenLLMetry before gen_ai.operation.name
        op = attrs.get("llm.request.type")
    return isinstance(op, str) and op in CHAT_OPERATIONS


def event_id_of(trace_id: str, span_id: str) -> uuid.UUID:
    """The event id of a span: the same span exported twice is one event downstream."""
    return uuid.uuid5(SPAN_NAMESPACE, f"{trace_id}:{span_id}")


def _role(value: Any) -> str:
    role = str(value or "user").lower()
    role = _ROLE_ALIASES.get(role, role)
    return role if role in _ROLES else "user"


def _json(value: Any) -> Any:
    """A structured attribute: JSON text on spans, a structured value on events."""
    if isinstance(value, str):
        try:
            data = json.loads(value)
        except (ValueError, RecursionError):
            return value
        # JSON text may escape a NUL or a lone surrogate that no event can carry.
        return scrub(data) if "\\u" in value and _UNSTORABLE.search(value) else data
    return value


def _is_openai_content(parts: list[Any]) -> bool:
    """Whether a list of parts is OpenAI-style content (``text``, ``image_url``, ...) rather than
    OpenTelemetry GenAI parts (the text in ``content``).

    Decided on the whole message, not its first part: an OTel message may start with a ``uri``,
    ``blob`` or ``tool_call`` part, none of which has a ``content`` key.

    >>> _is_openai_content([{"type": "uri", "uri": "https://x/a.png"}, {"type": "text", "content": "hi"}])
    False
    >>> _is_openai_content([{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": "u"}}])
    True
    """
    for part in parts:
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        if kind in OPENAI_PART_TYPES:
            return True
        if kind == "text" and "text" in part and "content" not in part:
            return True
        if kind == "file" and isinstance(part.get("file"), dict):  # OpenAI's {"type": "file", "file": {...}}
            return True
    return False


def _text_of_value(value: Any) -> str | None:
    """A tool's arguments or response as text: kept as sent when text, else as JSON.

    They go into the part's ``text``, so redaction sees them like any other text.
    """
    if value is None:
        return None
    if isinstance(value, str):
        return value
    return json.dumps(value, default=str, ensure_ascii=False)


def _tool_part(part: dict[str, Any]) -> ContentPart | None:
    """The tool parts of the OTel schema with all they carry (``None`` for any other part)."""
    kind = part.get("type")
    ident = _str(part.get("id"), 200)
    if kind == "tool_call":
        text = _text_of_value(part.get("arguments"))
        return ContentPart(type="tool_call", name=_str(part.get("name"), 200), id=ident, text=text)  # type: ignore[call-arg]
    if kind == "tool_call_response":
        return ContentPart(type="tool_call_response", id=ident, text=_text_of_value(part.get("response")))  # type: ignore[call-arg]
    if kind == "server_tool_call":
        text = _text_of_value(part.get("server_tool_call"))
        return ContentPart(type="server_tool_call", name=_str(part.get("name"), 200), id=ident, text=text)  # type: ignore[call-arg]
    if kind == "server_tool_call_response":
        text = _text_of_value(part.get("server_tool_call_response"))
        return ContentPart(type="server_tool_call_response", id=ident, text=text)  # type: ignore[call-arg]
    return None


def _otel_content(parts: list[Any], keep_media: bool) -> str | list[ContentPart]:
    """OTel GenAI parts as event content; tool parts keep their id, name, arguments and response."""
    body = otel_parts(parts, keep_media)
    if isinstance(body, str) or len(body) != len(parts):  # all text (a plain string), or not part for part
        return body
    return [
        (_tool_part(raw) if isinstance(raw, dict) else None) or converted
        for raw, converted in zip(parts, body, strict=True)
    ]


def _message(role: Any, content: Any, keep_media: bool) -> ChatMessage:
    """A message from the current form (``parts``) or an older one (``content`` text or list)."""
    body: str | list[ContentPart]
    if isinstance(content, list) and content and not _is_openai_content(content):
        body = _otel_content(content, keep_media)
    elif isinstance(content, list):
        # OpenAI-style content parts inside an older event body.
        body = openai_content(content, keep_media)
    elif content is None:
        body = ""
    elif isinstance(content, str):
        body = content
    else:
        body = json.dumps(content, default=str)
    mapped = _role(role)
    if role is not None and str(role) != mapped:  # e.g. Gemini's "model": keep what was sent
        return ChatMessage(role=mapped, content=body, original_role=str(role)[:64])  # type: ignore[arg-type,call-arg]
    return ChatMessage(role=mapped, content=body)  # type: ignore[arg-type]


def _current_messages(value: Any, keep_media: bool) -> list[ChatMessage]:
    data = _json(value)
    if not isinstance(data, list):
        return []
    out = []
    for item in data:
        if isinstance(item, dict):
            out.append(_message(item.get("role"), item.get("parts", item.get("content")), keep_media))
    return out


def _indexed(attrs: dict[str, Any], prefix: str) -> list[dict[str, Any]]:
    """``gen_ai.prompt.0.role``, ``gen_ai.prompt.0.content``, ... as a list of dicts."""
    found: dict[int, dict[str, Any]] = {}
    plen = len(prefix)
    for key, value in attrs.items():
        if not key.startswith(prefix):
            continue
        index, _, name = key[plen:].partition(".")
        if index.isdigit() and name:
            found.setdefault(int(index), {})[name] = value
    return [found[i] for i in sorted(found)]


def _attribute_payload(attrs: dict[str, Any]) -> dict[str, Any]:
    """The fields of an older per-message event sent as attributes instead of a body.

    Attributes hold no maps, so ``message`` (of ``gen_ai.choice``) and a list of ``content``
    parts come as JSON text; a ``message`` that is not JSON is taken as the message's text.

    >>> _attribute_payload({"index": 0, "message": '{"role": "assistant", "content": "Hi"}'})
    {'index': 0, 'message': {'role': 'assistant', 'content': 'Hi'}}
    """
    payload = {k: attrs[k] for k in ("role", "content", "index", "finish_reason", "message") if k in attrs}
    content = payload.get("content")
    if isinstance(content, str) and content.startswith("["):
        parts = _json(content)
        # Only a list of typed parts: a user's text that happens to be a JSON list stays text.
        if isinstance(parts, list) and parts and all(isinstance(p, dict) and "type" in p for p in parts):
            payload["content"] = parts
    if "message" in payload:
        message = _json(payload["message"])
        payload["message"] = message if isinstance(message, dict) else {"content": payload["message"]}
    return payload


class SpanContent:
    """Messages, response and finish reasons gathered from a span, its events and its log records."""

    def __init__(self) -> None:
        self.system: list[ChatMessage] = []
        self.inputs: list[ChatMessage] = []
        self.outputs: list[ChatMessage] = []
        self.finish_reasons: list[str] = []

    def add_current(self, attrs: dict[str, Any], keep_media: bool) -> None:
        """``gen_ai.system_instructions``, ``gen_ai.input.messages``, ``gen_ai.output.messages``."""
        if not self.system and "gen_ai.system_instructions" in attrs:
            parts = _json(attrs["gen_ai.system_instructions"])
            if isinstance(parts, list | str) and parts:
                self.system = [_message("system", parts, keep_media)]
        if not self.inputs and "gen_ai.input.messages" in attrs:
            self.inputs = _current_messages(attrs["gen_ai.input.messages"], keep_media)
        if not self.outputs and "gen_ai.output.messages" in attrs:
            data = _json(attrs["gen_ai.output.messages"])
            self.outputs = _current_messages(data, keep_media)
            if isinstance(data, list):
                self.finish_reasons += [
                    str(m["finish_reason"]) for m in data if isinstance(m, dict) and m.get("finish_reason")
                ]

    def add_indexed(self, attrs: dict[str, Any], keep_media: bool) -> None:
        """OpenLLMetry's ``gen_ai.prompt.N.*`` / ``gen_ai.completion.N.*`` attributes."""
        if not self.inputs:
            self.inputs = [
                _message(m.get("role"), m.get("content"), keep_media) for m in _indexed(attrs, "gen_ai.prompt.")
            ]
        if not self.outputs:
            completions = _indexed(attrs, "gen_ai.completion.")
            self.outputs = [_message(m.get("role", "assistant"), m.get("content"), keep_media) for m in completions]
            self.finish_reasons += [str(m["finish_reason"]) for m in completions if m.get("finish_reason")]

    def add_event(self, name: str, attrs: dict[str, Any], body: Any, keep_media: bool) -> None:
        """One GenAI event (a span event or a log record)."""
        if name == DETAILS_EVENT:
            self.add_current(attrs, keep_media)
            return
        # The body (a map) wins; fields it lacks may come as attributes (span events have no body).
        payload = {**_attribute_payload(attrs), **(body if isinstance(body, dict) else {})}
        if name in MESSAGE_EVENTS:
            content = payload.get("content")
            role = payload.get("role") or MESSAGE_EVENTS[name]
            (self.system if role == "system" else self.inputs).append(_message(role, content, keep_media))
        elif name == "gen_ai.choice":
            raw = payload.get("message")
            message: dict[str, Any] = raw if isinstance(raw, dict) else {}
            if "index" in payload and payload.get("index") not in (0, "0"):
                return  # one response per event: the first choice
            self.outputs.append(_message(message.get("role", "assistant"), message.get("content"), keep_media))
            if payload.get("finish_reason"):
                self.finish_reasons.append(str(payload["finish_reason"]))
        elif name == "gen_ai.content.prompt" and not self.inputs:
            data = _json(attrs.get("gen_ai.prompt"))
            if isinstance(data, list):
                self.inputs = [
                    _message(m.get("role"), m.get("content"), keep_media) for m in data if isinstance(m, dict)
                ]
            elif isinstance(data, str):
                self.inputs = [_message("user", data, keep_media)]
        elif name == "gen_ai.content.completion" and not self.outputs:
            data = _json(attrs.get("gen_ai.completion"))
            if isinstance(data, list):
                self.outputs = [
                    _message(m.get("role", "assistant"), m.get("content"), keep_media)
                    for m in data
                    if isinstance(m, dict)
                ]
            elif isinstance(data, str):
                self.outputs = [_message("assistant", data, keep_media)]

    @property
    def captured(self) -> bool:
        """Whether any content was recorded."""
        return bool(self.system or self.inputs or self.outputs)


def _number(value: Any) -> float | None:
    """A finite number of at least 0, else ``None``: one bad optional attribute (a negative count,
    NaN, infinity, a bool, text) leaves its field empty instead of failing the whole event.

    An integer too large for a float (OTLP/JSON carries 64-bit and larger integers as text) is
    infinite, so it is left out too.

    >>> [_number(v) for v in (0.25, 3, -1, float("inf"), float("nan"), True, "2", 10**400)]
    [0.25, 3.0, None, None, None, None, None, None]
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) and number >= 0 else None


def _first_int(attrs: dict[str, Any], *keys: str) -> int:
    """The first usable count among ``keys`` (capped to the 32-bit column), else 0."""
    for key in keys:
        value = _number(attrs.get(key))
        if value is not None:
            return min(int(value), MAX_INT32)
    return 0


def _ms(seconds: Any) -> float | None:
    """A duration in seconds as milliseconds, ``None`` when unusable (see :func:`_number`)."""
    value = _number(seconds)
    ms = value * 1000.0 if value is not None else None
    return ms if ms is not None and math.isfinite(ms) else None


def _request(attrs: dict[str, Any]) -> dict[str, Any]:
    """Request parameters for ``metadata.request``; a non-finite number is left out, since
    JSON (and a ``jsonb`` column) cannot hold it."""
    request = {}
    for key, name in _REQUEST_ATTRS.items():
        value = attrs.get(key)
        if key not in attrs or (isinstance(value, float) and not math.isfinite(value)):
            continue
        request[name] = value
    return request


def _str(value: Any, limit: int) -> str | None:
    if value is None or value == "":
        return None
    return str(value)[:limit]


def span_to_event(
    span: Span,
    logs: list[LogRecord],
    service: str,
    price_for: Any,
    keep_media: bool = False,
) -> InferenceEvent:
    """The inference event of a chat span and the GenAI log records that belong to it.

    ``service`` names the event's service when set; otherwise the resource's ``service.name``.
    ``price_for(model)`` gives (USD per 1k prompt, completion tokens) for the cost.
    """
    attrs = span.attributes
    content = SpanContent()
    content.add_current(attrs, keep_media)
    for record in logs:  # details events and per-message events, in their order
        content.add_event(record.event_name, record.attributes, record.body, keep_media)
    for ev in span.events:
        content.add_event(ev.name, ev.attributes, _json(ev.attributes.get("body")), keep_media)
    content.add_indexed(attrs, keep_media)

    finish = attrs.get("gen_ai.response.finish_reasons")
    finish_reasons = [str(f) for f in finish] if isinstance(finish, list) else ([str(finish)] if finish else [])
    finish_reasons = finish_reasons or content.finish_reasons
    if span.status_code == 2 and not finish_reasons:
        finish_reasons = ["error"]
    model = _str(attrs.get("gen_ai.response.model") or attrs.get("gen_ai.request.model"), 200) or "unknown"
    prompt_tokens = _first_int(attrs, "gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens")
    completion_tokens = _first_int(attrs, "gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens")
    ttft_ms = _ms(attrs.get("gen_ai.response.time_to_first_chunk"))
    resource_service = span.resource.get("service.name")
    metadata: dict[str, Any] = {
        "source": "otlp",
        "trace_id": span.trace_id,
        "span_id": span.span_id,
        "span_name": span.name[:200],
        "operation": attrs.get("gen_ai.operation.name") or attrs.get("llm.request.type"),
        "content_captured": content.captured,
    }
    if attrs.get("gen_ai.conversation.id"):
        metadata["conversation_id"] = str(attrs["gen_ai.conversation.id"])[:200]
    if len(finish_reasons) > 1:
        metadata["finish_reasons"] = finish_reasons
    if attrs.get("gen_ai.request.model") and attrs.get("gen_ai.request.model") != model:
        metadata["request_model"] = str(attrs["gen_ai.request.model"])[:200]
    if span.status_code == 2:
        metadata["error"] = (span.status_message or str(attrs.get("error.type", "error")))[:500]
    if attrs.get("error.type"):
        metadata["error_type"] = str(attrs["error.type"])[:200]
    if attrs.get("server.address"):
        metadata["server_address"] = str(attrs["server.address"])[:200]
    request = _request(attrs)
    if request:
        metadata["request"] = request
    response_text = content.outputs[0].text if content.outputs else ""
    prompt_price, completion_price = price_for(model)
    start = span.start_unix_nano or span.end_unix_nano
    return InferenceEvent(
        event_id=event_id_of(span.trace_id, span.span_id),
        ts=datetime.fromtimestamp(start / 1e9, UTC) if start else datetime.now(UTC),
        service=service or _str(resource_service, 200) or "unknown_service",
        model_version=model,
        messages=[*content.system, *content.inputs],
        response=response_text,
        latency_ms=max(span.end_unix_nano - span.start_unix_nano, 0) / 1e6,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        cost=Price(prompt_price, completion_price).cost(prompt_tokens, completion_tokens),
        request_id=_str(attrs.get("gen_ai.response.id"), 200),
        metadata=metadata,
        time_to_first_token_ms=ttft_ms,
        provider=_str(attrs.get("gen_ai.provider.name") or attrs.get("gen_ai.system"), 200),
        finish_reason=finish_reasons[0][:64] if finish_reasons else None,
    )
