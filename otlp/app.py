"""The OTLP/HTTP receiver: ``POST /v1/traces`` and ``POST /v1/logs`` (protobuf or JSON, gzip).

GenAI chat spans become inference events on the ``inference`` topic (through the producer SDK,
so a Kafka outage spools them to disk); every other span is counted and dropped. Each answer has
the request's content type, as OTLP/HTTP requires: an empty ``Export*ServiceResponse`` on
success, a ``google.rpc.Status`` with the reason on a 400.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest

from atalaia.events import scrub
from atalaia.settings import Settings
from otlp import decode
from otlp.assembler import Assembler

log = logging.getLogger(__name__)

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
_UNSTORABLE = re.compile(rb"\\u(?:[dD][89a-fA-F][0-9a-fA-F]{2}|0000)")
EXPIRE_EVERY_S = 0.25


def _status_protobuf(code: int, message: str) -> bytes:
    """A ``google.rpc.Status`` (code = 1, message = 2) in protobuf, without its generated class."""
    raw = message.encode("utf-8")[:4000]
    length = len(raw)
    prefix = bytearray()
    while True:  # varint of the length
        byte = length & 0x7F
        length >>= 7
        prefix.append(byte | (0x80 if length else 0))
        if not length:
            break
    return bytes([0x08, code & 0x7F, 0x12]) + bytes(prefix) + raw


def _scrub_decoded(found: decode.Decoded) -> None:
    for span in found.spans:
        span.attributes = scrub(span.attributes)
        span.name = scrub(span.name)
        span.status_message = scrub(span.status_message)
        span.resource = scrub(span.resource)
        for ev in span.events:
            ev.attributes = scrub(ev.attributes)
    for rec in found.logs:
        rec.attributes, rec.body, rec.resource = (
            scrub(rec.attributes),
            scrub(rec.body),
            scrub(rec.resource),
        )


def create_app(settings: Settings, emit: Callable[[Any], None], wait_s: float = 2.0) -> FastAPI:
    """The receiver, emitting inference events through ``emit`` (the producer SDK's ``emit``)."""
    assembler = Assembler(
        emit, settings.otlp_service_name, settings.price_for, keep_media=settings.event_keep_media, wait_s=wait_s
    )

    async def ticker() -> None:
        while True:
            await asyncio.sleep(EXPIRE_EVERY_S)
            assembler.expire()

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(ticker())
        try:
            yield
        finally:
            task.cancel()
            assembler.flush()

    app = FastAPI(title="Atalaia OTLP receiver", version="0.1.0", lifespan=lifespan)
    app.state.assembler = assembler
    registry = CollectorRegistry()
    gauges = {
        name: Gauge(f"atalaia_otlp_{name}", f"OTLP receiver: {name.replace('_', ' ')} since start", registry=registry)
        for name in vars(assembler.stats)
    }
    waiting = Gauge("atalaia_otlp_spans_waiting", "chat spans waiting for their log records", registry=registry)

    def _answer(content_type: str, status: int = 200, message: str = "") -> Response:
        if status != 200:
            assembler.stats.rejected_requests += 1
            log.warning("otlp request rejected", extra={"status": status, "reason": message[:300]})
        if content_type == JSON:
            body = json.dumps({"code": 3, "message": message}) if status != 200 else "{}"
            return Response(body, status_code=status, media_type=JSON)
        return Response(_status_protobuf(3, message) if status != 200 else b"", status_code=status, media_type=PROTOBUF)

    async def _read(request: Request) -> tuple[str, bytes] | Response:
        content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if content_type not in (PROTOBUF, JSON):
            return JSONResponse(
                {"code": 3, "message": f"unsupported Content-Type {content_type!r}; send {PROTOBUF} or {JSON}"},
                status_code=415,
            )
        raw = await request.body()
        try:
            return content_type, decode.decompress(raw, request.headers.get("content-encoding"))
        except decode.DecodeError as exc:
            return _answer(content_type, 400, str(exc))

    def _unstorable(content_type: str, body: bytes) -> bool:
        return (b"\x00" in body) if content_type == PROTOBUF else bool(_UNSTORABLE.search(body))

    async def _ingest(request: Request, from_protobuf: Any, from_json: Any, add: Any) -> Response:
        """One OTLP export request: read, decode (protobuf or JSON), scrub, hand to ``add``."""
        read = await _read(request)
        if isinstance(read, Response):
            return read
        content_type, body = read
        assembler.stats.requests += 1
        try:
            found = from_protobuf(body) if content_type == PROTOBUF else from_json(body)
        except decode.DecodeError as exc:
            return _answer(content_type, 400, str(exc))
        if _unstorable(content_type, body):
            _scrub_decoded(found)
        add(found)
        return _answer(content_type)

    @app.post("/v1/traces")
    async def traces(request: Request) -> Response:
        return await _ingest(
            request,
            decode.traces_from_protobuf,
            decode.traces_from_json,
            lambda found: assembler.add_spans(found.spans, found.skipped),
        )

    @app.post("/v1/logs")
    async def logs(request: Request) -> Response:
        return await _ingest(
            request,
            decode.logs_from_protobuf,
            decode.logs_from_json,
            lambda found: assembler.add_logs(found.logs, found.skipped),
        )

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "stats": vars(assembler.stats), "waiting": assembler.waiting}

    @app.get("/metrics")
    async def metrics() -> Response:
        for name, gauge in gauges.items():
            gauge.set(getattr(assembler.stats, name))
        waiting.set(assembler.waiting)
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app


def serve(settings: Settings) -> None:
    """Run the receiver until SIGINT/SIGTERM; events go through the producer SDK."""
    from atalaia.asgi import serve_until_stopped
    from producers.sdk import EventProducer

    producer = EventProducer(settings, client_id=f"otlp-{settings.otlp_port}")
    app = create_app(settings, producer.emit, wait_s=settings.otlp_log_wait_s)
    log.info("otlp receiver starting", extra={"host": settings.otlp_host, "port": settings.otlp_port})
    try:
        serve_until_stopped(app, settings.otlp_host, settings.otlp_port)
    finally:
        producer.close(timeout=30)
        log.info("otlp receiver stopped", extra={"spooled_left": producer.spool_depth})
