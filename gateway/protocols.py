"""What the gateway reads from OpenAI Chat Completions and Anthropic Messages traffic.

Each protocol has a reader of the request body (model, messages, stream), of a whole response
body, and of a stream (one server-sent event at a time). Readers only look: the bytes the
caller and the upstream exchange are forwarded as they are (except OpenAI's usage chunk, see
:mod:`gateway.app`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from atalaia.content import anthropic_content, openai_content
from atalaia.events import ChatMessage

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


def _message(role: Any, content: Any, parse: Any, keep_media: bool) -> ChatMessage:
    role = str(role or "user")
    mapped = role if role in _ROLES else "user"
    body = parse(content, keep_media)
    if mapped != role:
        return ChatMessage(role=mapped, content=body, original_role=role[:64])  # type: ignore[arg-type,call-arg]
    return ChatMessage(role=mapped, content=body)  # type: ignore[arg-type]


def _int(value: Any) -> int:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0 else 0


# -- OpenAI Chat Completions -------------------------------------------------------------------
def request_record(kind: str, body: dict[str, Any]) -> CallRecord:
    """What is needed of a request before forwarding it (the messages are read once answered)."""
    return CallRecord(model=str(body.get("model") or ""), kind=kind, stream=bool(body.get("stream")))


def request_messages(kind: str, body: dict[str, Any], keep_media: bool) -> list[ChatMessage]:
    """The messages of a request body of protocol ``kind`` (Anthropic's ``system`` first)."""
    return (openai_messages if kind == "openai" else anthropic_messages)(body, keep_media)


def openai_messages(body: dict[str, Any], keep_media: bool) -> list[ChatMessage]:
    """Messages of a ``/v1/chat/completions`` request."""
    messages = body.get("messages")
    return [
        _message(m.get("role"), m.get("content"), openai_content, keep_media)
        for m in (messages if isinstance(messages, list) else [])
        if isinstance(m, dict)
    ]


def openai_usage(record: CallRecord, usage: Any) -> None:
    """Token counts of an OpenAI ``usage`` object."""
    if isinstance(usage, dict):
        record.prompt_tokens = _int(usage.get("prompt_tokens"))
        record.completion_tokens = _int(usage.get("completion_tokens"))
        record.usage_seen = True


def openai_response(record: CallRecord, body: dict[str, Any]) -> None:
    """Read a whole chat completion."""
    record.response_model = body.get("model")
    record.response_id = body.get("id")
    choices = body.get("choices") or []
    if choices and isinstance(choices[0], dict):
        message = choices[0].get("message") or {}
        content = message.get("content")
        record.text = [content] if isinstance(content, str) else [openai_text(content)]
        record.finish_reason = choices[0].get("finish_reason")
    openai_usage(record, body.get("usage"))


def openai_text(content: Any) -> str:
    """Text of a response content that came as parts."""
    from atalaia.content import text_of

    return text_of(content)


def openai_chunk(record: CallRecord, chunk: dict[str, Any], now: float) -> None:
    """Read one ``chat.completion.chunk``."""
    record.response_model = record.response_model or chunk.get("model")
    record.response_id = record.response_id or chunk.get("id")
    for choice in chunk.get("choices") or []:
        if not isinstance(choice, dict) or choice.get("index", 0) != 0:
            continue
        delta = choice.get("delta") or {}
        piece = delta.get("content")
        if isinstance(piece, str) and piece:
            if record.first_token_at is None:
                record.first_token_at = now
            record.text.append(piece)
        if choice.get("finish_reason"):
            record.finish_reason = choice["finish_reason"]
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
    """Read a whole ``message``."""
    record.response_model = body.get("model")
    record.response_id = body.get("id")
    record.text = [
        str(b.get("text", "")) for b in body.get("content") or [] if isinstance(b, dict) and b.get("type") == "text"
    ]
    record.finish_reason = body.get("stop_reason")
    anthropic_usage(record, body.get("usage"))


def anthropic_event(record: CallRecord, event: dict[str, Any], now: float) -> None:
    """Read one streaming event (``message_start`` ... ``message_stop``)."""
    kind = event.get("type")
    if kind == "message_start":
        message = event.get("message") or {}
        record.response_model = message.get("model")
        record.response_id = message.get("id")
        anthropic_usage(record, message.get("usage"))
    elif kind == "content_block_delta":
        delta = event.get("delta") or {}
        if delta.get("type") == "text_delta" and delta.get("text"):
            if record.first_token_at is None:
                record.first_token_at = now
            record.text.append(str(delta["text"]))
    elif kind == "message_delta":
        delta = event.get("delta") or {}
        if delta.get("stop_reason"):
            record.finish_reason = delta["stop_reason"]
        anthropic_usage(record, event.get("usage"))


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
