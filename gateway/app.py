"""``atalaia gateway``: a reverse proxy for OpenAI Chat Completions and Anthropic Messages that
turns every call into an inference event.

A caller swaps its provider's base URL for ``http://<gateway>/<upstream name>``; everything
after the name is appended to the upstream's ``base_url``, with the caller's headers
(credentials included) forwarded untouched. The gateway never logs, stores or inspects those
headers. Answers, streams and errors come back as the upstream sent them; chat calls
(``POST .../chat/completions`` on an ``openai`` upstream, ``POST .../messages`` on an
``anthropic`` one) are read on the way through and emitted as events once answered.

One change is made to traffic: an OpenAI streaming request that did not ask for usage gets
``stream_options.include_usage`` (without it the upstream never says how many tokens the stream
cost), and the extra usage-only chunk is then held back from the caller, who did not ask for it.

A stream that carries an error (Anthropic's ``event: error``, an OpenAI ``{"error": ...}``
chunk) is counted as an upstream error (status ``stream_error``) and its event marked
``finish_reason: error``; one that ends before its terminal event (the caller went away, the
upstream's connection broke) still makes an event, marked ``finish_reason: incomplete``.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from atalaia.content_encoding import decompress
from atalaia.settings import Settings
from gateway import protocols as p
from gateway.calls import FinishedCall, Upstream, upstreams_of

log = logging.getLogger(__name__)

#: Headers that belong to one connection, never forwarded (RFC 9110 §7.6.1), plus ours.
HOP_BY_HOP = frozenset(
    {
        "host",
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "x-atalaia-service",
    }
)
_DROP_BACK = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length", "trailer", "upgrade"})
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


def _chat_kind(upstream: Upstream, method: str, path: str) -> str | None:
    if method != "POST":
        return None
    path = path.rstrip("/")
    if upstream.protocol == "openai" and path.endswith("chat/completions"):
        return "openai"
    if upstream.protocol == "anthropic" and path.endswith("messages") and not path.endswith("count_tokens"):
        return "anthropic"
    return None


def _split_events(buffer: bytearray) -> list[bytes]:
    """Complete server-sent events at the head of ``buffer`` (removed from it), separators kept."""
    out: list[bytes] = []
    while True:
        cut, width = buffer.find(b"\n\n"), 2
        crlf = buffer.find(b"\r\n\r\n")
        if crlf != -1 and (cut == -1 or crlf < cut):
            cut, width = crlf, 4
        if cut == -1:
            return out
        out.append(bytes(buffer[: cut + width]))
        del buffer[: cut + width]


def _with_headers(response: Response, upstream: list[tuple[bytes, bytes]]) -> Response:
    """``response`` with the upstream's headers (Starlette's own content-length kept, if any)."""
    response.raw_headers = [h for h in response.raw_headers if h[0] == b"content-length"] + upstream
    return response


def create_app(settings: Settings, hand_off: Callable[[FinishedCall], None]) -> Starlette:
    """The gateway over ``settings.gateway_upstreams``, handing each answered chat call to ``hand_off``
    (which turns it into an inference event, see :class:`gateway.calls.EventBuilder`)."""
    import aiohttp

    upstreams = upstreams_of(settings)
    registry = CollectorRegistry()
    calls = Counter("atalaia_gateway_calls", "calls through the gateway", ["upstream", "status"], registry=registry)
    errors = Counter(
        "atalaia_gateway_upstream_errors",
        "upstream answers with status >= 400, or no answer (502)",
        ["upstream", "status"],
        registry=registry,
    )
    emitted = Counter(
        "atalaia_gateway_events", "answered chat calls handed off as inference events", ["upstream"], registry=registry
    )
    state: dict[str, Any] = {}

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=settings.gateway_timeout_s)
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300)
        # auto_decompress off: bytes go back exactly as the upstream sent them.
        state["session"] = aiohttp.ClientSession(
            timeout=timeout, connector=connector, auto_decompress=False, skip_auto_headers=("User-Agent",)
        )
        try:
            yield
        finally:
            await state["session"].close()

    async def proxy(request: Request) -> Response:
        started = time.perf_counter()
        name = request.path_params["upstream"]
        upstream = upstreams.get(name)
        if upstream is None:
            return JSONResponse(
                {
                    "error": {
                        "message": f"no upstream named {name!r}; configured: {sorted(upstreams)}",
                        "type": "not_found",
                    }
                },
                status_code=404,
            )
        path = request.path_params["path"]
        body = sent = await request.body()
        headers = {k: v for k, v in request.headers.items() if k not in HOP_BY_HOP}
        kind = _chat_kind(upstream, request.method, path)
        record: p.CallRecord | None = None
        hide_usage = False
        if kind is not None:
            try:
                # A compressed body is forwarded as it came; its plain JSON is what the event reads.
                # Inflated off the event loop: a small gzip bomb must not stall every relayed stream.
                encoding = headers.get("content-encoding")
                if encoding:
                    body = await asyncio.to_thread(decompress, body, encoding)
                payload = json.loads(body)
                if not isinstance(payload, dict):
                    raise ValueError("not an object")
            except ValueError:  # ContentEncodingError too
                kind = None  # not ours to read: the upstream answers it (with its own 400)
            else:
                record = p.request_record(kind, payload)
                headers["accept-encoding"] = "identity"  # the answer is read on the way through
                options = payload.get("stream_options")
                if (
                    kind == "openai"
                    and record.stream
                    and not (isinstance(options, dict) and options.get("include_usage"))
                ):
                    extra = {**(options if isinstance(options, dict) else {}), "include_usage": True}
                    sent = json.dumps({**payload, "stream_options": extra}).encode()
                    headers.pop("content-encoding", None)  # the rewritten body goes uncompressed
                    hide_usage = True
        service = request.headers.get("x-atalaia-service") or upstream.name
        url = f"{upstream.base_url}/{path}"
        if request.url.query:
            url += "?" + request.url.query
        session = state["session"]
        try:
            resp = await session.request(request.method, url, data=sent or None, headers=headers, allow_redirects=False)
        except Exception as exc:  # noqa: BLE001 - connection refused, DNS, timeout: the caller gets a 502
            errors.labels(name, "502").inc()
            calls.labels(name, "502").inc()
            log.warning("upstream unreachable", extra={"upstream": name, "error": type(exc).__name__})
            return JSONResponse(
                {
                    "error": {
                        "message": f"upstream {name!r} unreachable: {type(exc).__name__}",
                        "type": "upstream_error",
                    }
                },
                status_code=502,
            )
        status = resp.status
        calls.labels(name, str(status)).inc()
        # Raw pairs, not a dict: repeated headers (several set-cookie) all go back, byte for byte.
        back = [(k.lower(), v) for k, v in resp.raw_headers if k.decode("latin-1").lower() not in _DROP_BACK]
        if status >= 400:
            errors.labels(name, str(status)).inc()
            log.info("upstream error passed through", extra={"upstream": name, "status": status, "path": path[:200]})
            record = None
        streaming = resp.headers.get("content-type", "").startswith("text/event-stream")
        if not streaming:
            try:
                content = await resp.read()
            finally:
                resp.release()
            if record is not None:
                latency = (time.perf_counter() - started) * 1000.0
                hand_off(FinishedCall(name, service, status, record, body, content, latency, None))
                emitted.labels(name).inc()
            return _with_headers(Response(content, status_code=status), back)

        async def relay() -> AsyncIterator[bytes]:
            buffer = bytearray()
            # What ended the stream early: stays "caller_disconnected" when the caller's going
            # away closes or cancels this generator (GeneratorExit, CancelledError).
            cut_short: str | None = "caller_disconnected"
            try:
                async for chunk in resp.content.iter_any():
                    if record is None:
                        yield chunk
                        continue
                    buffer += chunk
                    now = time.perf_counter()
                    out = []
                    for event in _split_events(buffer):
                        data = _read(record, event, now)
                        if hide_usage and isinstance(data, dict) and data.get("usage") and not data.get("choices"):
                            continue  # the usage chunk the caller did not ask for
                        out.append(event)
                    if out:
                        yield b"".join(out)
                if buffer:
                    if record is not None:  # a last event without its blank line (e.g. "data: [DONE]")
                        _read(record, bytes(buffer), time.perf_counter())
                    yield bytes(buffer)
                cut_short = None
            except Exception as exc:  # the upstream's connection broke or timed out mid-stream
                cut_short = f"upstream: {type(exc).__name__}"
                raise
            finally:
                resp.release()
                if record is not None:
                    if record.complete:
                        # The stream's terminal event was relayed: a caller that hangs up right
                        # after it (the openai client closes on [DONE]) cut nothing short.
                        cut_short = None
                    elif cut_short is None:
                        cut_short = "upstream closed the stream before its end"
                    if cut_short is not None and record.error_type is None:
                        record.incomplete = cut_short
                        if not cut_short.startswith("caller"):
                            errors.labels(name, "stream_incomplete").inc()
                    latency = (time.perf_counter() - started) * 1000.0
                    first = record.first_token_at
                    ttft = None if first is None else (first - started) * 1000.0
                    hand_off(FinishedCall(name, service, status, record, body, None, latency, ttft))
                    emitted.labels(name).inc()

        def _read(record: p.CallRecord, event: bytes, now: float) -> Any:
            had_error = record.error_type is not None
            data = p.read_event(record, event, now)
            if record.error_type is not None and not had_error:
                errors.labels(name, "stream_error").inc()
                log.info("upstream error inside a stream", extra={"upstream": name, "error": record.error_type})
            return data

        return _with_headers(StreamingResponse(relay(), status_code=status), back)

    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "ok", "upstreams": {n: u.base_url for n, u in upstreams.items()}})

    async def metrics(_: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    routes = [
        Route("/healthz", healthz),
        Route("/metrics", metrics),
        Route("/{upstream}/{path:path}", proxy, methods=METHODS),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.upstreams = upstreams
    return app


class DatedResponses:
    """ASGI middleware: a ``date`` header on every response that has none.

    The gateway is served without uvicorn's own ``date`` and ``server`` headers, which would
    otherwise repeat the upstream's (``date: X, X``, ``server: uvicorn, uvicorn``); its own answers
    (404, 502, ``/healthz``, ``/metrics``) still carry a date, as HTTP asks of an origin server.
    """

    def __init__(self, app: Any) -> None:
        self.app = app
        self.state = getattr(app, "state", None)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def dated(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                if not any(k.lower() == b"date" for k, _ in headers):
                    headers.append((b"date", email.utils.formatdate(usegmt=True).encode()))
                    message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, dated)


def serve(settings: Settings) -> None:
    """Run the gateway until SIGINT/SIGTERM; events go through the producer SDK in a child process."""
    from atalaia.asgi import serve_until_stopped
    from gateway.emitter import ProcessEmitter

    producer = ProcessEmitter(settings, client_id=f"gateway-{settings.gateway_port}")
    app = create_app(settings, producer.hand_off)
    log.info(
        "gateway starting",
        extra={"host": settings.gateway_host, "port": settings.gateway_port, "upstreams": sorted(app.state.upstreams)},
    )
    try:
        serve_until_stopped(DatedResponses(app), settings.gateway_host, settings.gateway_port, default_headers=False)
    finally:
        producer.close(timeout=30)
        log.info("gateway stopped", extra={"events": producer.handed_over, "child_restarts": producer.restarts})
