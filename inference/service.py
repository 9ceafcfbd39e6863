"""What the inference routes share: the served models, the producer, the cache, retrieval, the
Prometheus collectors and the event builder, held by one :class:`Service` in ``app.state.service``.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Protocol

from fastapi import Request

from atalaia.events import RetrievedPassage
from atalaia.models.generator import ChatResult, ChatStream
from atalaia.settings import Settings
from inference.cache import ResponseCache
from inference.errors import APIError
from inference.event_builder import EventBuilder
from inference.limits import metadata_too_large
from inference.models import ModelManager
from inference.schemas import ChatCompletionRequest
from inference.telemetry import ServiceMetrics

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


class Retriever(Protocol):
    """What the service needs from a retrieval index (:class:`atalaia.rag.RetrievalIndex`)."""

    def search(self, query: Any, k: int = ...) -> list[tuple[Any, float]]: ...


class QueryEmbedder(Protocol):
    """Embeds questions for retrieval and the semantic cache (:class:`atalaia.metrics.embedding.Embedder`)."""

    def encode(self, texts: Any) -> Any: ...


@dataclass
class Service:
    """The parts of one inference app; the routers read it from ``request.app.state.service``."""

    settings: Settings
    models: ModelManager
    producer: EventSink | None
    metrics: ServiceMetrics
    events: EventBuilder
    retriever: Retriever | None = None
    cache: ResponseCache | None = None
    embedder: QueryEmbedder | None = None

    def max_tokens(self, req: ChatCompletionRequest) -> int:
        """The request's token limit (default :data:`DEFAULT_MAX_TOKENS`); 400 above the setting."""
        limit = self.settings.max_new_tokens_limit
        value = req.max_completion_tokens or req.max_tokens or min(DEFAULT_MAX_TOKENS, limit)
        if value > limit:
            raise APIError(400, f"max_tokens must be at most {limit}", "max_tokens")
        return value

    def check_metadata(self, metadata: Any) -> None:
        """400 when a request's ``metadata`` is larger than ``ATALAIA_REQUEST_METADATA_MAX_BYTES``."""
        refusal = metadata_too_large(metadata, self.settings.request_metadata_max_bytes)
        if refusal:
            raise APIError(400, refusal, "metadata", "metadata_too_large")

    def emit_inference(
        self,
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
        """Count an answer in Prometheus and hand its event to the producer (which never blocks)."""
        metrics = self.metrics
        metrics.latency.labels(version).observe(latency_ms / 1000.0)
        metrics.tokens.labels(version, "prompt").inc(result.prompt_tokens)
        metrics.tokens.labels(version, "completion").inc(result.completion_tokens)
        metrics.requests.labels(version, "ok").inc()
        if cache_hit:
            metrics.cache_hits.labels(cache_hit).inc()
        if self.producer is None:
            return
        event = self.events.inference(
            version, req, result, latency_ms, event_id, self.max_tokens(req), context, cache_hit, started, shadow
        )
        self.producer.emit(event)

    def delivery(self) -> dict[str, Any]:
        """What happened to this process's events: waiting (memory, disk), how old, refused, lost."""
        producer = self.producer
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
            "degraded_after_s": self.settings.delivery_degraded_after_s,
        }


def get_service(request: Request) -> Service:
    """The :class:`Service` of the app serving ``request``."""
    service: Service = request.app.state.service
    return service
