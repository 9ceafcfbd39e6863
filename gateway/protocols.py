"""What the gateway reads from OpenAI Chat Completions and Anthropic Messages traffic.

Each protocol has a reader of the request body (model, messages, stream), of a whole response
body, and of a stream (one server-sent event at a time). Readers only look: the bytes the
caller and the upstream exchange are forwarded as they are (except OpenAI's usage chunk, see
:mod:`gateway.app`).

Besides text and usage they note tool calls (kept as ``tool_call`` parts, name and id, as the
other routes keep them), an error the upstream reported inside a 200 answer or stream (an
Anthropic ``event: error``, an OpenAI ``{"error": ...}`` chunk), and whether a stream reached
its end (``message_stop``; ``[DONE]`` or a ``finish_reason``), so a call that failed or was cut
off is not recorded as a normal answer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from atalaia.content import anthropic_content, openai_content, text_of
from atalaia.events import MAX_INT32, ChatMessage, ContentPart

_ROLES = {"system", "user", "assistant", "tool", "developer"}


@dataclass
class CallRecord:
    """What one call through the gateway produced, filled in as the answer arrives."""

    model: str = ""
    kind: str = "openai"
    stream: bool = False
    response_model: str | None = None
    response_id: str | None = None
    text: list[str] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None
    first_token_at: float | None = None
    usage_seen: bool = False
    #: Tool calls of the answer by position (a stream sends each in pieces): ``{"id", "name"}``.
    tool_calls: dict[int, dict[str, str | None]] = field(default_factory=dict)
    #: An error the upstream reported inside its 200 answer (type and message).
    error_type: str | None = None
    error_message: str | None = None
    #: A stream's terminal event arrived (Anthropic ``message_stop``; OpenAI ``[DONE]`` or a finish reason).
    complete: bool = False
    #: Why a stream ended before its terminal event (set by the relay), None if it did not.
    incomplete: str | None = None

    def note_error(self, error: Any) -> None:
        """Record an upstream ``error`` object (``{"type", "message"}``, as both protocols send)."""
        error = error if isinstance(error, dict) else {"message": error}
        self.error_type = str(error.get("type") or error.get("code") or "error")[:200]
        self.error_message = str(error.get("message") or "")[:500] or None

    def note_tool_call(self, index: Any, call_id: Any, name: Any) -> None:
        """Record (or complete, for a stream's later pieces) the tool call at position ``index``."""
        entry = self.tool_calls.setdefault(index if isinstance(index, int) else len(self.tool_calls), {})
        if isinstance(call_id, str) and call_id:
            entry["id"] = call_id[:200]
        if isinstance(name, str) and name:
            entry["name"] = name[:200]

    def tool_call_parts(self) -> list[dict[str, Any]]:
        """The answer's tool calls in order, as ``tool_call`` parts (name and id, never arguments)."""
        return [{"type": "tool_call", **self.tool_calls[i]} for i in sorted(self.tool_calls)]


def _message(role: Any, content: Any, parse: Any, keep_media: bool) -> ChatMessage:
    role = str(role or "user")
    mapped = role if role in _ROLES else "user"
    body = parse(content, keep_media)
    if mapped != role:
        return ChatMessage(role=mapped, content=body, original_role=role[:64])  # type: ignore[arg-type,call-arg]
    return ChatMessage(role=mapped, content=body)  # type: ignore[arg-type]


def _int(value: Any) -> int:
    # Clamped to the event's 32-bit bound: an absurd count must not cost the whole event.
    if not isinstance(value, int | float) or isinstance(value, bool) or not value >= 0:
        return 0
    return MAX_INT32 if value >= MAX_INT32 else int(value)


# -- OpenAI Chat Completions -------------------------------------------------------------------
def request_record(kind: str, body: dict[str, Any]) -> CallRecord:
    """What is needed of a request before forwarding it (the messages are read once answered)."""
    return CallRecord(model=str(body.get("model") or ""), kind=kind, stream=bool(body.get("stream")))


def request_messages(kind: str, body: dict[str, Any], keep_media: bool) -> list[ChatMessage]:
    """The messages of a request body of protocol ``kind`` (Anthropic's ``system`` first)."""
    return (openai_messages if kind == "openai" else anthropic_messages)(body, keep_media)


def openai_messages(body: dict[str, Any], keep_media: bool) -> list[ChatMessage]:
    """Messages of a ``/v1/chat/completions`` request: an assistant's ``tool_calls`` (or older
    ``function_call``) become ``tool_call`` parts and a ``tool`` message a ``tool_call_response``
    part, as Anthropic's ``tool_use`` and ``tool_result`` blocks do."""
    messages = body.get("messages")
    return [
        _openai_message(m, keep_media) for m in (messages if isinstance(messages, list) else []) if isinstance(m, dict)
    ]


def _openai_message(m: dict[str, Any], keep_media: bool) -> ChatMessage:
    message = _message(m.get("role"), m.get("content"), openai_content, keep_media)
    if message.role == "tool":
        text = text_of(m.get("content")) if not isinstance(m.get("content"), str) else m["content"]
        call_id = m.get("tool_call_id")
        part = ContentPart(
            type="tool_call_response", text=text or None, id=call_id if isinstance(call_id, str) else None
        )  # type: ignore[call-arg]
        message.content = [part]
        return message
    calls = (
        [c for c in m.get("tool_calls") or [] if isinstance(c, dict)] if isinstance(m.get("tool_calls"), list) else []
    )
    if isinstance(m.get("function_call"), dict):
        calls.append({"function": m["function_call"]})
    if not calls:
        return message
    parts = message.content if isinstance(message.content, list) else []
    if isinstance(message.content, str) and message.content:
        parts = [ContentPart(type="text", text=message.content)]
    for call in calls:
        function: dict[str, Any] = call["function"] if isinstance(call.get("function"), dict) else {}
        name, call_id, arguments = function.get("name"), call.get("id"), function.get("arguments")
        parts.append(
            ContentPart(  # type: ignore[call-arg]
                type="tool_call",
                name=name[:200] if isinstance(name, str) else None,
                id=call_id[:200] if isinstance(call_id, str) else None,
                # In ``text``, as serve and the OTLP receiver keep them: where redaction reaches.
                text=arguments if isinstance(arguments, str) and arguments else None,
            )
        )
    message.content = parts
    return message


def openai_usage(record: CallRecord, usage: Any) -> None:
    """Token counts of an OpenAI ``usage`` object."""
    if isinstance(usage, dict):
        record.prompt_tokens = _int(usage.get("prompt_tokens"))
        record.completion_tokens = _int(usage.get("completion_tokens"))
        record.usage_seen = True


def openai_response(record: CallRecord, body: dict[str, Any]) -> None:
    """Read a whole chat completion (or the ``{"error": ...}`` some servers answer with a 200)."""
    record.response_model = body.get("model")
    record.response_id = body.get("id")
    if body.get("error") and not body.get("choices"):
        record.note_error(body["error"])
    choices = body.get("choices") or []
    if choices and isinstance(choices[0], dict):
        message = choices[0].get("message") or {}
        content = message.get("content")
        record.text = [content] if isinstance(content, str) else [openai_text(content)]
        record.finish_reason = choices[0].get("finish_reason")
        _openai_tool_calls(record, message.get("tool_calls"))
        call = message.get("function_call")
        if isinstance(call, dict):
            record.note_tool_call(len(record.tool_calls), None, call.get("name"))
    openai_usage(record, body.get("usage"))


def _openai_tool_calls(record: CallRecord, calls: Any) -> bool:
    """Note each of an answer's (or a stream delta's) ``tool_calls``; whether there were any."""
    if not isinstance(calls, list):
        return False
    for position, call in enumerate(calls):
        if isinstance(call, dict):
            function: dict[str, Any] = call["function"] if isinstance(call.get("function"), dict) else {}
            record.note_tool_call(call.get("index", position), call.get("id"), function.get("name"))
    return bool(calls)


def openai_text(content: Any) -> str:
    """Text of a response content that came as parts."""
    from atalaia.content import text_of

    return text_of(content)


def openai_chunk(record: CallRecord, chunk: dict[str, Any], now: float) -> None:
    """Read one ``chat.completion.chunk`` (or a mid-stream ``{"error": ...}``)."""
    if chunk.get("error") and not chunk.get("choices"):
        record.note_error(chunk["error"])
        return
    record.response_model = record.response_model or chunk.get("model")
    record.response_id = record.response_id or chunk.get("id")
    for choice in chunk.get("choices") or []:
        if not isinstance(choice, dict) or choice.get("index", 0) != 0:
            continue
        delta = choice.get("delta") or {}
        piece = delta.get("content")
        generated = isinstance(piece, str) and bool(piece)
        if isinstance(piece, str) and piece:
            record.text.append(piece)
        generated = _openai_tool_calls(record, delta.get("tool_calls")) or generated
        if generated and record.first_token_at is None:  # a tool call's first piece is a first token too
            record.first_token_at = now
        if choice.get("finish_reason"):
            record.finish_reason = choice["finish_reason"]
            record.complete = True
    if chunk.get("usage"):
        openai_usage(record, chunk["usage"])


# -- Anthropic Messages ------------------------------------------------------------------------
def anthropic_messages(body: dict[str, Any], keep_media: bool) -> list[ChatMessage]:
    """Messages of a ``/v1/messages`` request, with ``system`` first."""
    messages: list[ChatMessage] = []
    system = body.get("system")
    if system:
        messages.append(_message("system", system, anthropic_content, keep_media))
    raw = body.get("messages")
    for m in raw if isinstance(raw, list) else []:
        if isinstance(m, dict):
            messages.append(_message(m.get("role"), m.get("content"), anthropic_content, keep_media))
    return messages


def anthropic_usage(record: CallRecord, usage: Any) -> None:
    """Token counts of an Anthropic ``usage`` object (cache reads and writes are input too)."""
    if not isinstance(usage, dict):
        return
    inputs = sum(_int(usage.get(k)) for k in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"))
    if inputs:
        record.prompt_tokens = inputs
    if "output_tokens" in usage:
        record.completion_tokens = _int(usage.get("output_tokens"))
    record.usage_seen = True


def anthropic_response(record: CallRecord, body: dict[str, Any]) -> None:
    """Read a whole ``message`` (or an ``{"type": "error"}`` answered with a 200)."""
    if body.get("type") == "error":
        record.note_error(body.get("error"))
        return
    record.response_model = body.get("model")
    record.response_id = body.get("id")
    blocks = [b for b in body.get("content") or [] if isinstance(b, dict)]
    record.text = [str(b.get("text", "")) for b in blocks if b.get("type") == "text"]
    for block in blocks:
        if block.get("type") == "tool_use":
            record.note_tool_call(len(record.tool_calls), block.get("id"), block.get("name"))
    record.finish_reason = body.get("stop_reason")
    anthropic_usage(record, body.get("usage"))


def anthropic_event(record: CallRecord, event: dict[str, Any], now: float) -> None:
    """Read one streaming event (``message_start`` ... ``message_stop``, or ``error``)."""
    kind = event.get("type")
    if kind == "message_start":
        message = event.get("message") or {}
        record.response_model = message.get("model")
        record.response_id = message.get("id")
        anthropic_usage(record, message.get("usage"))
    elif kind == "content_block_start":
        block = event.get("content_block") or {}
        if isinstance(block, dict) and block.get("type") == "tool_use":
            record.note_tool_call(event.get("index"), block.get("id"), block.get("name"))
    elif kind == "content_block_delta":
        delta = event.get("delta") or {}
        if delta.get("type") == "text_delta" and delta.get("text"):
            if record.first_token_at is None:
                record.first_token_at = now
            record.text.append(str(delta["text"]))
        elif delta.get("type") == "input_json_delta" and record.first_token_at is None:
            record.first_token_at = now  # a tool call's arguments are generated tokens too
    elif kind == "message_delta":
        delta = event.get("delta") or {}
        if delta.get("stop_reason"):
            record.finish_reason = delta["stop_reason"]
        anthropic_usage(record, event.get("usage"))
    elif kind == "message_stop":
        record.complete = True
    elif kind == "error":
        record.note_error(event.get("error"))


def read_event(record: CallRecord, event: bytes, now: float) -> Any:
    """Read one server-sent event of ``record``'s stream into it; its JSON data (or None).

    >>> record = CallRecord(kind="anthropic", stream=True)
    >>> error = b'{"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}'
    >>> _ = read_event(record, b"event: error\\ndata: " + error + b"\\n\\n", 0.0)
    >>> record.error_type
    'overloaded_error'
    """
    data = sse_data(event)
    if isinstance(data, dict):
        (openai_chunk if record.kind == "openai" else anthropic_event)(record, data, now)
    elif data is None and record.kind == "openai" and _is_done(event):
        record.complete = True
    return data


def _is_done(event: bytes) -> bool:
    return any(line.rstrip(b"\r").endswith(b"[DONE]") for line in event.split(b"\n") if line.startswith(b"data:"))


def sse_data(event: bytes) -> Any:
    """The JSON ``data:`` of one server-sent event, or None (comments, ``[DONE]``, no data)."""
    payload = b"\n".join(
        line[5:].lstrip(b" ") for line in event.replace(b"\r\n", b"\n").split(b"\n") if line.startswith(b"data:")
    )
    if not payload or payload == b"[DONE]":
        return None
    try:
        return json.loads(payload)
    except ValueError:
        return None
