"""The FastAPI application: OpenAI-compatible chat completions that emit one event per request."""

from __future__ import annotations

import hmac
import json
import logging
import time
import uuid
from collections.abc import Iterator
from typing import Any, Protocol

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from atalaia.content import openai_content
from atalaia.events import ATALAIA_PROVIDER, ChatMessage, FeedbackEvent, InferenceEvent, ModelEvent, RetrievedPassage
from atalaia.metrics.operational import Price
from atalaia.model_signing import sign
from atalaia.models.generator import ChatResult, ChatStream, PromptTooLongError
from atalaia.rag import build_prompt
from atalaia.settings import Settings
from atalaia.subjects import subject_id, subject_pepper
from inference.auth import current_caller, install_api_keys
from inference.cache import KeyParts, ResponseCache, cacheable
from inference.limits import BodySizeLimit, metadata_too_large
from inference.models import ModelManager, ServedModel, SwapError
from inference.routing import Route, choose, sticky_key
from inference.schemas import ChatCompletionRequest, DeployRequest, FeedbackRequest, RollbackRequest
from inference.telemetry import ServiceMetrics

log = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS = 128


class ChatModel(Protocol):
    """What the service needs from a generator (:class:`atalaia.models.generator.Generator`)."""

    @property
    def context_length(self) -> int: ...

    def chat(
        self,
        messages: list[dict[str, str]],
        max_tokens: int = ...,
        temperature: float = ...,
        top_p: float = ...,
        stop: list[str] | None = ...,
    ) -> ChatResult: ...

    def chat_stream(
        self,
        messages: list[dict[str, str]],
        max_tokens: int = ...,
        temperature: float = ...,
        top_p: float = ...,
        stop: list[str] | None = ...,
    ) -> ChatStream: ...


class EventSink(Protocol):
    """What the service needs from the producer SDK (:class:`producers.sdk.EventProducer`)."""

    def emit(self, event: Any, topic: str | None = None) -> None: ...

    @property
    def connected(self) -> bool: ...

    @property
    def spool_depth(self) -> int: ...


class APIError(Exception):
    """An OpenAI-style error response."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        kind: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind


def _error_body(message: str, kind: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _unsupported_loader(path: str) -> Any:
    raise SwapError("this service was built without a model loader; deploys are not possible")


def completion_id(event_id: uuid.UUID) -> str:
    """The public completion id, from which feedback finds the event.

    >>> completion_id(uuid.UUID(int=1))
    'chatcmpl-00000000-0000-0000-0000-000000000001'
    """
    return f"chatcmpl-{event_id}"


class Retriever(Protocol):
    """What the service needs from a retrieval index (:class:`atalaia.rag.RetrievalIndex`)."""

    def search(self, query: Any, k: int = ...) -> list[tuple[Any, float]]: ...


class QueryEmbedder(Protocol):
    """Embeds questions for retrieval and the semantic cache (:class:`atalaia.metrics.embedding.Embedder`)."""

    def encode(self, texts: Any) -> Any: ...


def create_app(
    settings: Settings,
    generator: ChatModel,
    producer: EventSink | None,
    retriever: Retriever | None = None,
    cache: ResponseCache | None = None,
    embedder: QueryEmbedder | None = None,
    models: ModelManager | None = None,
) -> FastAPI:
    """Build the service around a loaded generator and an event producer (None: emit nothing).

    ``retriever`` adds regulation passages to the prompt (RAG); ``cache`` serves repeated
    deterministic questions; ``embedder`` embeds each question once for both.
    """
    app = FastAPI(title="Atalaia inference", version="0.1.0")
    app.add_middleware(BodySizeLimit, max_bytes=settings.request_max_bytes)
    metrics = ServiceMetrics()
    # The request's `user` is stored only as a keyed hash (atalaia.privacy): read the key once.
    pepper = subject_pepper(settings)
    models = models or ModelManager(ServedModel(settings.model_version, generator), loader=_unsupported_loader)
    metrics.active_model.labels(models.active.version).set(1)

    def _on_swap(old: ServedModel, new: ServedModel) -> None:
        metrics.active_model.labels(old.version).set(0)
        metrics.active_model.labels(new.version).set(1)

    models.on_change.append(_on_swap)
    app.state.settings, app.state.models, app.state.producer, app.state.metrics = settings, models, producer, metrics
    keep_media = settings.event_keep_media
    app.state.api_keys = install_api_keys(app, settings)  # chat and feedback need a key once keys exist

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(_error_body(exc.message, exc.kind, exc.param, exc.code), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        err = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        loc = [str(p) for p in err["loc"] if p != "body"]
        param = ".".join(loc) or None
        if err.get("type") == "json_invalid":
            message = "request body is not valid JSON"
        else:
            message = f"{param}: {err['msg']}" if param else str(err["msg"])
        return JSONResponse(_error_body(message, "invalid_request_error", param), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(_error_body(str(exc.detail), "invalid_request_error"), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return JSONResponse(_error_body("internal error; see the service log", "server_error"), status_code=500)

    def emit_inference(
        version: str,
        req: ChatCompletionRequest,
        result: ChatResult,
        latency_ms: float,
        event_id: uuid.UUID,
        context: list[RetrievedPassage] | None = None,
        cache_hit: str | None = None,
        started: float | None = None,
        shadow: bool = False,
    ) -> None:
        metrics.latency.labels(version).observe(latency_ms / 1000.0)
        # From the request's start to the model's first token (a cached answer generated none).
        ttft_ms = None
        if started is not None and not cache_hit and result.first_token_at is not None:
            ttft_ms = min(max((result.first_token_at - started) * 1000.0, 0.0), latency_ms)
        metrics.tokens.labels(version, "prompt").inc(result.prompt_tokens)
        metrics.tokens.labels(version, "completion").inc(result.completion_tokens)
        metrics.requests.labels(version, "ok").inc()
        if cache_hit:
            metrics.cache_hits.labels(cache_hit).inc()
        if producer is None:
            return
        meta = dict(req.metadata or {})
        reference = meta.pop("reference", None)
        event = InferenceEvent(
            event_id=event_id,
            service=settings.service_name,
            model_version=version,
            provider=ATALAIA_PROVIDER,
            messages=[ChatMessage(role=m.role, content=openai_content(m.content, keep_media)) for m in req.messages],
            response=result.text,
            latency_ms=latency_ms,
            time_to_first_token_ms=ttft_ms,
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
            # A cached answer costs no generation: only the tokens the model actually processed count.
            cost=0.0
            if cache_hit
            else Price(*settings.price_for(version)).cost(result.prompt_tokens, result.completion_tokens),
            context=context or [],
            cache_hit=bool(cache_hit),
            reference=reference if isinstance(reference, str) else None,
            subject_id=subject_id(req.user, pepper) if req.user else None,
            caller=current_caller.get(),
            metadata={
                **meta,
                **({"cache": cache_hit} if cache_hit else {}),
                "max_tokens": _max_tokens(req),
                "temperature": req.temperature,
                "finish_reason": result.finish_reason,
                # A canary's shadow answer: scored, never returned to the caller.
                **({"shadow": True} if shadow else {}),
            },
        )
        producer.emit(event)

    def _max_tokens(req: ChatCompletionRequest) -> int:
        value = req.max_completion_tokens or req.max_tokens or min(DEFAULT_MAX_TOKENS, settings.max_new_tokens_limit)
        if value > settings.max_new_tokens_limit:
            raise APIError(400, f"max_tokens must be at most {settings.max_new_tokens_limit}", "max_tokens")
        return value

    def _check_metadata(metadata: Any) -> None:
        refusal = metadata_too_large(metadata, settings.request_metadata_max_bytes)
        if refusal:
            raise APIError(400, refusal, "metadata", "metadata_too_large")

    def _check_model(req: ChatCompletionRequest, version: str) -> None:
        # During a canary a request naming the active version may be answered by the candidate.
        if req.model not in {settings.generator_model, settings.model_version, version, models.active.version}:
            raise APIError(
                404,
                f"The model '{req.model}' does not exist; GET /v1/models lists the served models",
                "model",
                "model_not_found",
            )

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatCompletionRequest) -> Any:
        # This request stays on the model routed here (active, or a canary's candidate), whatever a
        # swap does meanwhile.
        route = choose(
            models.active,
            models.canary,
            sticky_key(req.user, current_caller.get(), [(m.role, m.text) for m in req.messages]),
        )
        served = route.served
        version, generator = served.version, served.generator
        _check_model(req, version)
        _check_metadata(req.metadata)
        max_tokens = _max_tokens(req)
        messages = [{"role": m.role, "content": m.text} for m in req.messages]
        stop = [req.stop] if isinstance(req.stop, str) else req.stop
        event_id = uuid.uuid4()
        created = int(time.time())
        started = time.perf_counter()
        question = next((m.text for m in reversed(req.messages) if m.role == "user"), req.messages[-1].text)
        params = {"temperature": req.temperature, "top_p": req.top_p, "max_tokens": max_tokens, "stop": stop}
        key = KeyParts.from_request(version, messages, params) if cache is not None else None
        use_cache = cache is not None and cacheable(params)
        vector = None
        hit = cache.get(key) if use_cache and cache is not None and key is not None else None
        # An exact hit needs no embedding; otherwise the question is embedded once, for the
        # semantic lookup and for retrieval.
        if hit is None and embedder is not None and (retriever is not None or use_cache):
            vector = (await run_in_threadpool(embedder.encode, [question]))[0]
            if use_cache and cache is not None and key is not None:
                hit = cache.get(key, embedding=vector)
        if hit is not None:
            cached_result, cached_context = hit.value
            if req.stream:
                return StreamingResponse(
                    _cached_sse(version, req, cached_result, cached_context, hit.kind, event_id, created, started),
                    media_type="text/event-stream",
                    headers={"x-atalaia-event-id": str(event_id), "x-atalaia-cache": hit.kind},
                )
            latency_ms = (time.perf_counter() - started) * 1000.0
            emit_inference(version, req, cached_result, latency_ms, event_id, cached_context, hit.kind)
            return JSONResponse(
                _completion_body(version, event_id, created, cached_result, cached_context),
                headers={"x-atalaia-event-id": str(event_id), "x-atalaia-cache": hit.kind},
            )
        context: list[RetrievedPassage] = []
        if retriever is not None:
            found = await run_in_threadpool(
                retriever.search, vector if vector is not None else question, settings.rag_top_k
            )
            context = [RetrievedPassage(id=p.id, text=p.text, score=round(float(score), 4)) for p, score in found]
            # The passages go in a system message ahead of the conversation; the client's own
            # system prompt, if any, stays as it was.
            rag_system = build_prompt(question, [p for p, _ in found])[0]
            messages = [rag_system, *messages]
        try:
            if req.stream:
                stream = await run_in_threadpool(
                    generator.chat_stream, messages, max_tokens, req.temperature, req.top_p, stop
                )
            else:
                result = await run_in_threadpool(generator.chat, messages, max_tokens, req.temperature, req.top_p, stop)
        except PromptTooLongError as exc:
            metrics.requests.labels(version, "rejected").inc()
            raise APIError(400, str(exc), "messages", "context_length_exceeded") from None
        except ValueError as exc:
            metrics.requests.labels(version, "rejected").inc()
            raise APIError(400, str(exc)) from None

        if not req.stream:
            latency_ms = (time.perf_counter() - started) * 1000.0
            if use_cache and cache is not None and key is not None:
                cache.put(key, (result, context), embedding=vector)
            emit_inference(version, req, result, latency_ms, event_id, context, started=started)
            return JSONResponse(
                _completion_body(version, event_id, created, result, context),
                headers={"x-atalaia-event-id": str(event_id)},
                background=_shadow_task(route, req, messages, max_tokens, stop, context),
            )

        def sse() -> Iterator[str]:
            with stream:
                yield _sse_chunk(event_id, created, version, {"role": "assistant"}, None)
                for piece in stream:
                    if piece:
                        yield _sse_chunk(event_id, created, version, {"content": piece}, None)
                final = stream.result
            if final is not None:
                yield _sse_chunk(event_id, created, version, {}, final.finish_reason)
                if (req.stream_options or {}).get("include_usage"):
                    yield _usage_chunk(event_id, created, version, final)
                # A completed stream is cached like a plain answer (a client that hung up
                # mid-stream leaves no result, and nothing half-done is cached).
                if use_cache and cache is not None and key is not None:
                    cache.put(key, (final, context), embedding=vector)
                latency_ms = (time.perf_counter() - started) * 1000.0
                emit_inference(version, req, final, latency_ms, event_id, context, started=started)
            yield "data: [DONE]\n\n"

        return StreamingResponse(
            sse(),
            media_type="text/event-stream",
            headers={"x-atalaia-event-id": str(event_id)},
            background=_shadow_task(route, req, messages, max_tokens, stop, context),
        )

    def _shadow_task(
        route: Route,
        req: ChatCompletionRequest,
        messages: list[dict[str, str]],
        max_tokens: int,
        stop: list[str] | None,
        context: list[RetrievedPassage],
    ) -> BackgroundTask | None:
        """A shadow canary's candidate answers the same prompt after the response is sent."""
        if route.shadow is None:
            return None
        shadow = route.shadow

        def run() -> None:  # sync: Starlette runs it in the thread pool
            started = time.perf_counter()
            try:
                result = shadow.generator.chat(messages, max_tokens, req.temperature, req.top_p, stop)
            except Exception as exc:  # noqa: BLE001 - a shadow failure must not touch the served answer
                log.warning("shadow answer failed", extra={"version": shadow.version, "error": str(exc)})
                return
            latency_ms = (time.perf_counter() - started) * 1000.0
            emit_inference(shadow.version, req, result, latency_ms, uuid.uuid4(), context, started=started, shadow=True)

        return BackgroundTask(run)

    def _sse_chunk(event_id: uuid.UUID, created: int, version: str, delta: dict[str, str], finish: str | None) -> str:
        payload = {
            "id": completion_id(event_id),
            "object": "chat.completion.chunk",
            "created": created,
            "model": version,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        return f"data: {json.dumps(payload)}\n\n"

    def _usage_chunk(event_id: uuid.UUID, created: int, version: str, result: ChatResult) -> str:
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

    def _cached_sse(
        version: str,
        req: ChatCompletionRequest,
        result: ChatResult,
        context: list[RetrievedPassage],
        kind: str,
        event_id: uuid.UUID,
        created: int,
        started: float,
    ) -> Iterator[str]:
        """A cached answer replayed as a stream: the whole text in one content chunk."""
        yield _sse_chunk(event_id, created, version, {"role": "assistant"}, None)
        if result.text:
            yield _sse_chunk(event_id, created, version, {"content": result.text}, None)
        yield _sse_chunk(event_id, created, version, {}, result.finish_reason)
        if (req.stream_options or {}).get("include_usage"):
            yield _usage_chunk(event_id, created, version, result)
        emit_inference(version, req, result, (time.perf_counter() - started) * 1000.0, event_id, context, kind)
        yield "data: [DONE]\n\n"

    def _completion_body(
        version: str, event_id: uuid.UUID, created: int, result: ChatResult, context: list[RetrievedPassage]
    ) -> dict[str, Any]:
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

    def _require_admin(request: Request) -> None:
        header = request.headers.get("authorization", "")
        supplied = header[7:].strip() if header[:7].lower() == "bearer " else ""
        token = settings.admin_token
        # compare_digest: the time taken must not reveal how much of the token was right.
        if not token or not hmac.compare_digest(supplied.encode(), token.encode()):
            hint = "" if token else " (admin routes are disabled until ATALAIA_ADMIN_TOKEN is set)"
            raise APIError(
                401,
                f"admin routes need Authorization: Bearer <ATALAIA_ADMIN_TOKEN>{hint}",
                code="unauthorized",
                kind="authentication_error",
            )

    @app.post("/admin/deploy")
    async def admin_deploy(body: DeployRequest, request: Request) -> dict[str, Any]:
        _require_admin(request)
        try:
            served = await run_in_threadpool(models.deploy, body.model_version, body.artefact_path)
        except SwapError as exc:
            raise APIError(400, str(exc), "artefact_path", "deploy_failed") from None
        if producer is not None:  # the other instances follow through the models topic
            producer.emit(
                sign(
                    ModelEvent(
                        type="deploy",
                        model_version=served.version,
                        artefact_path=served.path,
                        previous_version=models.previous.version if models.previous else None,
                        reason=body.reason or "admin deploy",
                    ),
                    settings,
                )
            )
        return {"model_version": served.version, "previous": models.previous.version if models.previous else None}

    @app.post("/admin/rollback")
    async def admin_rollback(body: RollbackRequest, request: Request) -> dict[str, Any]:
        _require_admin(request)
        try:
            served = await run_in_threadpool(models.rollback, body.model_version)
        except SwapError as exc:
            raise APIError(409, str(exc), "model_version", "rollback_failed") from None
        if producer is not None:
            producer.emit(
                sign(
                    ModelEvent(type="rollback", model_version=served.version, reason=body.reason or "admin rollback"),
                    settings,
                )
            )
        return {"model_version": served.version}

    @app.post("/admin/cache/clear")
    async def admin_cache_clear(request: Request) -> dict[str, Any]:
        _require_admin(request)
        return {"cleared": cache.clear() if cache is not None else 0}

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [{"id": models.active.version, "object": "model", "created": 0, "owned_by": "atalaia"}],
        }

    @app.post("/v1/feedback", status_code=202)
    async def feedback(req: FeedbackRequest) -> dict[str, Any]:
        raw_id = req.completion_id.removeprefix("chatcmpl-")
        try:
            inference_id = uuid.UUID(raw_id)
        except ValueError:
            raise APIError(
                400, "completion_id must be the id of a chat completion (chatcmpl-<uuid>)", "completion_id"
            ) from None
        _check_metadata(req.metadata)
        if req.rating is None and not req.corrected_answer and not req.comment:
            raise APIError(400, "give at least one of rating, corrected_answer or comment")
        event = FeedbackEvent(
            inference_event_id=inference_id,
            rating=req.rating,
            corrected_answer=req.corrected_answer,
            comment=req.comment,
            metadata=req.metadata,
            subject_id=subject_id(req.user, pepper) if req.user else None,
            caller=current_caller.get(),
        )
        if producer is not None:
            producer.emit(event)
        return {"id": str(event.event_id), "object": "feedback", "status": "accepted"}

    def _delivery() -> dict[str, Any]:
        """What happened to this process's events: waiting (memory, disk), how old, refused, lost."""
        stats = getattr(producer, "stats", None)
        oldest = getattr(producer, "oldest_undelivered_age_s", None)
        age = oldest() if callable(oldest) else None
        return {
            "spool_depth": producer.spool_depth if producer is not None else 0,
            "pending": getattr(producer, "pending", 0),
            "oldest_undelivered_age_s": round(age, 1) if age is not None else None,
            "dead_lettered": getattr(stats, "dead_lettered", 0),
            "lost": getattr(stats, "lost", 0),
            "trimmed": getattr(stats, "trimmed", 0),
            "degraded_after_s": settings.delivery_degraded_after_s,
        }

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        delivery = _delivery() if producer is not None else None
        age = delivery["oldest_undelivered_age_s"] if delivery else None
        # Degraded, not down: answers go on and events wait in the spool, but someone should look
        # once events have waited longer than the setting allows.
        late = age is not None and age > settings.delivery_degraded_after_s
        body = {
            "status": "degraded" if late else "ok",
            "model": {
                "version": models.active.version,
                "loaded": models.active.generator is not None,
                "context_length": models.active.generator.context_length,
                "previous": models.previous.version if models.previous else None,
                "canary": (
                    {
                        "version": models.canary.candidate.version,
                        "share": models.canary.share,
                        "mode": models.canary.mode,
                    }
                    if models.canary is not None
                    else None
                ),
            },
            "kafka": {
                # connected: events flow to Kafka now; reachable: the broker answers (a poison
                # record, dead-lettered, makes neither false).
                "connected": producer.connected if producer is not None else None,
                "reachable": getattr(producer, "broker_reachable", producer.connected)
                if producer is not None
                else None,
                "bootstrap": settings.kafka_bootstrap,
                "spool_depth": delivery["spool_depth"] if delivery else 0,
            },
            "delivery": delivery,
        }
        # A degraded pipeline does not make the service unhealthy: HTTP 200 either way.
        return JSONResponse(body, status_code=200)

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        if producer is not None:
            delivery = _delivery()
            metrics.spool_depth.set(delivery["spool_depth"])
            metrics.events_lost.set(delivery["lost"])
            metrics.events_pending.set(delivery["pending"])
            metrics.events_dead_lettered.set(delivery["dead_lettered"])
            metrics.events_trimmed.set(delivery["trimmed"])
            metrics.oldest_undelivered.set(delivery["oldest_undelivered_age_s"] or 0.0)
            metrics.kafka_reachable.set(1 if getattr(producer, "broker_reachable", producer.connected) else 0)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
