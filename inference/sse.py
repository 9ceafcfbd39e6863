"""OpenAI's response shapes for chat completions: the JSON body and the server-sent event chunks."""

from __future__ import annotations

import json
import uuid
from typing import Any

from atalaia.events import RetrievedPassage
from atalaia.models.generator import ChatResult
from inference.event_builder import completion_id

DONE = "data: [DONE]\n\n"


def sse_chunk(event_id: uuid.UUID, created: int, version: str, delta: dict[str, str], finish: str | None) -> str:
    """One ``chat.completion.chunk`` as a server-sent event."""
    payload = {
        "id": completion_id(event_id),
        "object": "chat.completion.chunk",
        "created": created,
        "model": version,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return f"data: {json.dumps(payload)}\n\n"


def usage_chunk(event_id: uuid.UUID, created: int, version: str, result: ChatResult) -> str:
    """OpenAI's last chunk for ``stream_options.include_usage``: no choices, the usage."""
    usage = {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.total_tokens,
    }
    payload = {
        "id": completion_id(event_id),
        "object": "chat.completion.chunk",
        "created": created,
        "model": version,
        "choices": [],
        "usage": usage,
    }
    return f"data: {json.dumps(payload)}\n\n"


def completion_body(
    version: str, event_id: uuid.UUID, created: int, result: ChatResult, context: list[RetrievedPassage]
) -> dict[str, Any]:
    """The ``chat.completion`` body of a non-streamed answer (with ``citations`` of a RAG answer)."""
    body: dict[str, Any] = {
        "id": completion_id(event_id),
        "object": "chat.completion",
        "created": created,
        "model": version,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": result.text},
                "finish_reason": result.finish_reason,
            }
        ],
        "usage": {
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
            "total_tokens": result.total_tokens,
        },
    }
    if context:
        # The sources of a RAG answer; OpenAI clients ignore fields they do not know.
        body["citations"] = [{"id": p.id, "score": p.score} for p in context]
    return body
