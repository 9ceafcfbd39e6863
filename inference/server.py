"""Running the inference service: load the model, connect the producer, serve with uvicorn."""

from __future__ import annotations

import logging

from atalaia.settings import Settings

log = logging.getLogger(__name__)


def serve(settings: Settings) -> None:
    """Load the generator, start the producer and serve until SIGINT/SIGTERM."""
    import uvicorn

    from atalaia.models.generator import Generator
    from inference.app import create_app
    from producers.sdk import EventProducer

    generator = Generator.load(settings.generator_path, threads=settings.torch_threads)
    producer = EventProducer(settings, client_id=f"inference-{settings.inference_port}")
    app = create_app(settings, generator, producer)
    log.info(
        "inference service starting",
        extra={
            "host": settings.inference_host,
            "port": settings.inference_port,
            "model_version": settings.model_version,
        },
    )
    try:
        uvicorn.run(
            app, host=settings.inference_host, port=settings.inference_port, log_level="warning", access_log=False
        )
    finally:
        producer.close(timeout=30)
        log.info("inference service stopped", extra={"spooled_left": producer.spool_depth})
