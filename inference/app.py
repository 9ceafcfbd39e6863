"""The FastAPI application: OpenAI-compatible chat completions that emit one event per request.

``create_app`` only assembles: the :class:`inference.service.Service` the routers share, the
middleware (body size, API keys), OpenAI-style error handlers (``inference/errors.py``) and the
routers of ``inference/routes/`` (chat completions with SSE, feedback, admin, health and
metrics). What goes into an event is decided in ``inference/event_builder.py``.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI

from atalaia.settings import Settings
from inference.auth import install_api_keys
from inference.cache import ResponseCache
from inference.errors import APIError, install_error_handlers
from inference.event_builder import EventBuilder, completion_id
from inference.limits import BodySizeLimit
from inference.models import ModelManager, ServedModel, SwapError
from inference.routes import admin, chat, feedback, health
from inference.service import DEFAULT_MAX_TOKENS, ChatModel, EventSink, QueryEmbedder, Retriever, Service
from inference.telemetry import ServiceMetrics

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "APIError",
    "ChatModel",
    "EventSink",
    "QueryEmbedder",
    "Retriever",
    "completion_id",
    "create_app",
]


def _unsupported_loader(path: str) -> Any:
    raise SwapError("this service was built without a model loader; deploys are not possible")


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
    models = models or ModelManager(ServedModel(settings.model_version, generator), loader=_unsupported_loader)
    metrics.active_model.labels(models.active.version).set(1)

    def _on_swap(old: ServedModel, new: ServedModel) -> None:
        metrics.active_model.labels(old.version).set(0)
        metrics.active_model.labels(new.version).set(1)

    models.on_change.append(_on_swap)
    app.state.service = Service(
        settings=settings,
        models=models,
        producer=producer,
        metrics=metrics,
        events=EventBuilder(settings),
        retriever=retriever,
        cache=cache,
        embedder=embedder,
    )
    app.state.settings, app.state.models, app.state.producer, app.state.metrics = settings, models, producer, metrics
    app.state.api_keys = install_api_keys(app, settings)  # chat and feedback need a key once keys exist
    install_error_handlers(app)
    for router in (chat.router, admin.router, feedback.router, health.router):
        app.include_router(router)
    return app
