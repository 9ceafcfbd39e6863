"""Running the inference service: load the model, connect the producer, serve with uvicorn."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from atalaia.settings import Settings

log = logging.getLogger(__name__)


def initial_model(settings: Settings) -> tuple[str, Path]:
    """The version to serve at start: the registry's active one when it has a loadable folder,
    else ``ATALAIA_MODEL_VERSION`` from ``ATALAIA_GENERATOR_MODEL``."""
    from atalaia.storage.db import get_engine, has_schema
    from atalaia.storage.repository import active_model_version

    try:
        row = active_model_version(get_engine(settings.database_url)) if has_schema(settings.database_url) else None
    except Exception as exc:  # noqa: BLE001 - the registry is optional for serving; say so and go on
        log.warning("model registry unreachable; serving the configured model", extra={"error": str(exc)})
        row = None
    if row is not None:
        from atalaia.models.serving_choice import registered_folder

        # The base version is served in ATALAIA_SERVING_FORMAT, whatever its row recorded.
        folder = registered_folder(settings, row)
        if folder is not None:
            return str(row["version"]), folder
        log.error(
            "active model version has no loadable folder; serving the configured model",
            extra={"version": row["version"], "artefact_path": row["artefact_path"]},
        )
    from atalaia.models.exports import served_base_path

    return settings.model_version, served_base_path(settings)


def serve(settings: Settings) -> None:
    """Load the generator, start the producer and serve until SIGINT/SIGTERM."""
    from atalaia.asgi import serve_until_stopped
    from atalaia.models.generator import Generator
    from inference.app import create_app
    from inference.authority import ModelEventAuthority, count_refusals
    from inference.models import ModelManager, ServedModel, follow_model_events
    from producers.sdk import EventProducer

    version, path = initial_model(settings)
    generator = Generator.load(path, threads=settings.torch_threads)
    embedder = retriever = cache = None
    if settings.rag_enabled or settings.cache_enabled:
        from atalaia.metrics.embedding import Embedder
        from atalaia.models.embedder import load_embedder

        embedder = Embedder(load_embedder(settings))
    if settings.rag_enabled:
        from atalaia.rag import load_or_build

        assert settings.regulations_dir is not None and embedder is not None
        if not settings.regulations_dir.is_dir():
            raise FileNotFoundError(
                f"ATALAIA_REGULATIONS_DIR={settings.regulations_dir} is not a folder. Fix: point it at the "
                "regulations (Markdown sections), or set ATALAIA_RAG_ENABLED=false"
            )
        retriever = load_or_build(settings.regulations_dir, embedder, settings.home / "rag")
    if settings.cache_enabled:
        from inference.cache import ResponseCache

        cache = ResponseCache(settings.cache_max_entries, settings.cache_ttl_s, settings.cache_semantic_threshold)
    producer = EventProducer(settings, client_id=f"inference-{settings.inference_port}")
    models = ModelManager(
        ServedModel(version, generator, str(path)),
        loader=lambda path: Generator.load(path, threads=settings.torch_threads),
    )
    stop = threading.Event()
    app = create_app(settings, generator, producer, retriever=retriever, cache=cache, embedder=embedder, models=models)
    authority = ModelEventAuthority(settings)
    count_refusals(authority, app.state.metrics)  # /metrics: atalaia_model_events_refused_total{reason}
    follower = threading.Thread(
        target=follow_model_events, args=(models, settings, stop, authority), name="models", daemon=True
    )
    follower.start()
    log.info(
        "inference service starting",
        extra={
            "host": settings.inference_host,
            "port": settings.inference_port,
            "model_version": settings.model_version,
        },
    )
    try:
        serve_until_stopped(app, settings.inference_host, settings.inference_port)
    finally:
        stop.set()
        producer.close(timeout=30)
        log.info("inference service stopped", extra={"spooled_left": producer.spool_depth})
