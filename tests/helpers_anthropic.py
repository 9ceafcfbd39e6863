"""A local server that speaks the Anthropic Messages wire format (``POST /v1/messages``), as the
published API reference defines it, for the gateway's tests and benchmark.

Answers are deterministic: the reply repeats the last user text. Streams send the documented
sequence: ``message_start``, ``content_block_start``, ``ping``, ``content_block_delta`` (one
per word), ``content_block_stop``, ``message_delta`` (stop reason, output tokens),
``message_stop``. Errors use the documented error body. It keeps the headers it received, so a
test can check that credentials arrive untouched.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

API_KEY = "sk-ant-test-0123456789"


def _error(status: int, kind: str, message: str) -> JSONResponse:
    return JSONResponse({"type": "error", "error": {"type": kind, "message": message}}, status_code=status)


def _sse(kind: str, data: dict[str, Any]) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode()


def _user_text(messages: list[dict[str, Any]]) -> str:
    for m in reversed(messages):
        if m.get("role") == "user":
            content = m.get("content")
            if isinstance(content, str):
                return content
            return " ".join(b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text")
    return ""


def create_app(delay_s: float = 0.0) -> Starlette:
    """The fake Messages API; ``delay_s`` is waited before answering (a model's think time)."""
    seen: list[dict[str, str]] = []

    async def messages(request: Request) -> Response:
        seen.append(dict(request.headers))
        # The API takes the key as x-api-key; recent official clients send it as a bearer token.
        bearer = request.headers.get("authorization", "").removeprefix("Bearer ")
        if API_KEY not in (request.headers.get("x-api-key"), bearer):
            return _error(401, "authentication_error", "invalid x-api-key")
        if not request.headers.get("anthropic-version"):
            return _error(400, "invalid_request_error", "anthropic-version header is required")
        body = await request.json()
        if body.get("model") == "claude-missing":
            return _error(404, "not_found_error", f"model: {body['model']}")
        if not isinstance(body.get("max_tokens"), int):
            return _error(400, "invalid_request_error", "max_tokens: Field required")
        if delay_s:
            await asyncio.sleep(delay_s)
        words = f"You said: {_user_text(body.get('messages', []))}".split()[: body["max_tokens"]]
        stop = "end_turn" if len(words) < body["max_tokens"] else "max_tokens"
        system = body.get("system") or ""
        input_tokens = len(json.dumps(body.get("messages", [])).split()) + len(str(system).split())
        msg_id = f"msg_{uuid.uuid4().hex[:24]}"
        model = str(body["model"])
        if not body.get("stream"):
            return JSONResponse(
                {
                    "id": msg_id,
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [{"type": "text", "text": " ".join(words)}],
                    "stop_reason": stop,
                    "stop_sequence": None,
                    "usage": {"input_tokens": input_tokens, "output_tokens": len(words)},
                }
            )

        async def events() -> AsyncIterator[bytes]:
            start = {
                "id": msg_id,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": input_tokens, "output_tokens": 1},
            }
            yield _sse("message_start", {"type": "message_start", "message": start})
            yield _sse(
                "content_block_start",
                {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            )
            yield _sse("ping", {"type": "ping"})
            for i, word in enumerate(words):
                delta = {"type": "text_delta", "text": word if i == 0 else " " + word}
                yield _sse("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta})
            yield _sse("content_block_stop", {"type": "content_block_stop", "index": 0})
            yield _sse(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": stop, "stop_sequence": None},
                    "usage": {"output_tokens": len(words)},
                },
            )
            yield _sse("message_stop", {"type": "message_stop"})

        return StreamingResponse(events(), media_type="text/event-stream")

    app = Starlette(routes=[Route("/v1/messages", messages, methods=["POST"])])
    app.state.seen = seen
    return app


@contextmanager
def running(app: Any, port: int) -> Iterator[uvicorn.Server]:
    """Serve an ASGI app on 127.0.0.1:``port`` in a thread for the block's duration."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError(f"server on port {port} did not start")
        time.sleep(0.02)
    try:
        yield server
    finally:
        server.should_exit = True
        thread.join(10)
