"""Request limits of the inference service: a body-size cap (413) and a metadata-size cap (400).

Without them one client can send a request whose event no broker takes (Kafka's default message
limit is 1 MB) or that fills the spool. The body cap is checked before the body is parsed: from
``Content-Length`` when the client sends it, else while the body streams in.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send


def _error(message: str, param: str | None, code: str) -> bytes:
    body = {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}}
    return json.dumps(body).encode()


class BodySizeLimit:
    """ASGI middleware: answer 413 to a request body over ``max_bytes`` (``ATALAIA_REQUEST_MAX_BYTES``)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def _reject(self, send: Send, size: int | None) -> None:
        told = f" ({size} bytes)" if size is not None else ""
        body = _error(
            f"request body too large{told}; the limit is {self.max_bytes} bytes (ATALAIA_REQUEST_MAX_BYTES)",
            None,
            "request_too_large",
        )
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > self.max_bytes:
                    await self._reject(send, declared)
                    return
        # No (or a false) Content-Length: read the body up to the cap, then hand it on.
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._reject(send, None)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def metadata_too_large(metadata: Any, limit: int) -> str | None:
    """Why ``metadata`` is refused (its JSON is over ``limit`` bytes), or None.

    >>> metadata_too_large({"a": "x" * 10}, 100) is None, metadata_too_large({"a": "x" * 200}, 100)[:22]
    (True, 'metadata is 208 bytes ')
    """
    if not metadata:
        return None
    size = len(json.dumps(metadata, default=str, separators=(",", ":")).encode("utf-8"))
    if size <= limit:
        return None
    return f"metadata is {size} bytes as JSON; the limit is {limit} bytes (ATALAIA_REQUEST_METADATA_MAX_BYTES)"
