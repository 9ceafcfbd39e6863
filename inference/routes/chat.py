"""``POST /v1/chat/completions`` (plain and streamed as server-sent events) and ``GET /v1/models``."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.types import Send

from atalaia.events import RetrievedPassage
from atalaia.models.generator import ChatResult, PromptTooLongError
from atalaia.rag import build_prompt
from inference.auth import current_caller
from inference.cache import KeyParts, cacheable
from inference.errors import APIError, error_body
from inference.routing import Route, choose, sticky_key
from inference.schemas import ChatCompletionRequest
from inference.service import Service, get_service
from inference.sse import DONE, completion_body, sse_chunk, usage_chunk

log = logging.getLogger(__name__)
router = APIRouter()
ServiceDep = Annotated[Service, Depends(get_service)]


def _check_model(service: Service, req: ChatCompletionRequest, version: str) -> None:
    settings = service.settings
    # During a canary a request naming the active version may be answered by the candidate.
    if req.model not in {settings.generator_model, settings.model_version, version, service.models.active.version}:
        raise APIError(
            404,
            f"The model '{req.model}' does not exist; GET /v1/models lists the served models",
            "model",
            "model_not_found",
        )


def check_supported(req: ChatCompletionRequest) -> None:
    """400 in OpenAI's shape for a request field that would change the answer and that this
    service cannot honour, rather than answering as if it had not been sent.

    ``tools`` with ``tool_choice`` ``auto`` (or ``none``) are fine: the served model answers in
    text, which ``auto`` allows.
    """
    if req.n is not None and req.n > 1:
        raise APIError(
            400, "n > 1 is not supported: this service returns one choice per request", "n", "unsupported_value"
        )
    kind = (req.response_format or {}).get("type", "text")
    if kind != "text":
        raise APIError(
            400,
            f"response_format {kind!r} is not supported: the served model answers in free text only",
            "response_format",
            "unsupported_value",
        )
    choice = req.tool_choice
    if choice is not None and choice not in ("auto", "none"):
        raise APIError(
            400,
            "tool_choice other than 'auto' or 'none' is not supported: the served model does not call tools",
            "tool_choice",
            "unsupported_value",
        )
    # Sent at their neutral values (many clients send the defaults), they change nothing: accepted.
    unsupported = {
        "logprobs": (bool(req.logprobs), "log probabilities are not returned"),
        "top_logprobs": (bool(req.top_logprobs), "log probabilities are not returned"),
        "frequency_penalty": (bool(req.frequency_penalty), "repetition penalties are not applied"),
        "presence_penalty": (bool(req.presence_penalty), "repetition penalties are not applied"),
        "logit_bias": (bool(req.logit_bias), "a logit bias is not applied"),
        # Greedy answers (temperature 0) are the same on every call, seed or not.
        "seed": (
            req.seed is not None and req.temperature > 0,
            "sampling is not seeded here; use temperature 0 for reproducible answers",
        ),
    }
    for field, (sent, why) in unsupported.items():
        if sent:
            raise APIError(400, f"{field} is not supported: {why}", field, "unsupported_value")


class _ClosingStreamingResponse(StreamingResponse):
    """A ``StreamingResponse`` that calls ``on_close`` as soon as streaming ends, however it ends.

    Starlette cancels the streaming task when the client disconnects but neither closes the
    body iterator nor the generator stream behind it; they would be closed only when the
    garbage collector reached them (their frames can sit in reference cycles), and an
    ONNX Runtime or OpenVINO stream holds the model's lock until then, so the next request would wait.
    ``on_close`` runs before any background task, once the thread that ran the last ``next()``
    has returned (Starlette's thread pool waits for it even when cancelled), and must not block.
    """

    def __init__(self, *args: Any, on_close: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._on_close = on_close

    async def stream_response(self, send: Send) -> None:
        try:
            await super().stream_response(send)
        finally:
            self._on_close()


def _cached_sse(
    service: Service,
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
    yield sse_chunk(event_id, created, version, {"role": "assistant"}, None)
    if result.text:
        yield sse_chunk(event_id, created, version, {"content": result.text}, None)
    yield sse_chunk(event_id, created, version, {}, result.finish_reason)
    if (req.stream_options or {}).get("include_usage"):
        yield usage_chunk(event_id, created, version, result)
    service.emit_inference(version, req, result, (time.perf_counter() - started) * 1000.0, event_id, context, kind)
    yield DONE


@router.post("/v1/chat/completions")
async def chat_completions(req: ChatCompletionRequest, service: ServiceDep) -> Any:
    """An OpenAI chat completion; every answer (cached or not, streamed or not) emits one event."""
    settings, cache, embedder, retriever = service.settings, service.cache, service.embedder, service.retriever
    # This request stays on the model routed here (active, or a canary's candidate), whatever a
    # swap does meanwhile.
    route = choose(
        service.models.active,
        service.models.canary,
        sticky_key(req.user, current_caller.get(), [(m.role, m.text) for m in req.messages]),
    )
    served = route.served
    version, generator = served.version, served.generator
    _check_model(service, req, version)
    check_supported(req)
    service.check_metadata(req.metadata)
    max_tokens = service.max_tokens(req)
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
                _cached_sse(service, version, req, cached_result, cached_context, hit.kind, event_id, created, started),
                media_type="text/event-stream",
                headers={"x-atalaia-event-id": str(event_id), "x-atalaia-cache": hit.kind},
            )
        latency_ms = (time.perf_counter() - started) * 1000.0
        service.emit_inference(version, req, cached_result, latency_ms, event_id, cached_context, hit.kind)
        return JSONResponse(
            completion_body(version, event_id, created, cached_result, cached_context),
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
        service.metrics.requests.labels(version, "rejected").inc()
        raise APIError(400, str(exc), "messages", "context_length_exceeded") from None
    except ValueError as exc:
        service.metrics.requests.labels(version, "rejected").inc()
        raise APIError(400, str(exc)) from None

    if not req.stream:
        latency_ms = (time.perf_counter() - started) * 1000.0
        if use_cache and cache is not None and key is not None:
            cache.put(key, (result, context), embedding=vector)
        service.emit_inference(version, req, result, latency_ms, event_id, context, started=started)
        return JSONResponse(
            completion_body(version, event_id, created, result, context),
            headers={"x-atalaia-event-id": str(event_id)},
            background=_shadow_task(service, route, req, messages, max_tokens, stop, context),
        )

    def sse() -> Iterator[str]:
        with stream:
            yield sse_chunk(event_id, created, version, {"role": "assistant"}, None)
            try:
                for piece in stream:
                    if piece:
                        yield sse_chunk(event_id, created, version, {"content": piece}, None)
            except Exception:
                # The headers are sent: raising here would drop the connection mid-body with no
                # word to the client. End the stream with an OpenAI-style error event instead
                # (no [DONE]: the reply failed); the details go to the log, not to the client.
                log.exception("streamed generation failed", extra={"version": version, "event_id": str(event_id)})
                body = error_body("The server failed while generating the reply.", "server_error")
                yield f"data: {json.dumps(body)}\n\n"
                return
            final = stream.result
        if final is not None:
            yield sse_chunk(event_id, created, version, {}, final.finish_reason)
            if (req.stream_options or {}).get("include_usage"):
                yield usage_chunk(event_id, created, version, final)
            # A completed stream is cached like a plain answer (a client that hung up
            # mid-stream leaves no result, and nothing half-done is cached).
            if use_cache and cache is not None and key is not None:
                cache.put(key, (final, context), embedding=vector)
            latency_ms = (time.perf_counter() - started) * 1000.0
            service.emit_inference(version, req, final, latency_ms, event_id, context, started=started)
        yield DONE

    return _ClosingStreamingResponse(
        sse(),
        media_type="text/event-stream",
        headers={"x-atalaia-event-id": str(event_id)},
        background=_shadow_task(service, route, req, messages, max_tokens, stop, context),
        # A client that hangs up frees the model now, not when the garbage collector runs.
        on_close=stream.close,
    )


def _shadow_task(
    service: Service,
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
        service.emit_inference(
            shadow.version, req, result, latency_ms, uuid.uuid4(), context, started=started, shadow=True
        )

    return BackgroundTask(run)


@router.get("/v1/models")
async def list_models(service: ServiceDep) -> dict[str, Any]:
    """The served model (the active version)."""
    return {
        "object": "list",
        "data": [{"id": service.models.active.version, "object": "model", "created": 0, "owned_by": "atalaia"}],
    }
