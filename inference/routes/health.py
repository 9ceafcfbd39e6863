"""``GET /healthz`` (model, Kafka and delivery state) and ``GET /metrics`` (Prometheus)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from inference.service import Service, get_service

router = APIRouter()
ServiceDep = Annotated[Service, Depends(get_service)]


@router.get("/healthz")
async def healthz(service: ServiceDep) -> JSONResponse:
    """The served model, Kafka's state and the delivery of events; ``degraded`` when events wait too long."""
    settings, producer, models = service.settings, service.producer, service.models
    delivery = service.delivery() if producer is not None else None
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
            # transformers or onnxruntime-genai: which runtime a hot swap put in place.
            "backend": getattr(models.active.generator, "backend", None),
            # float32, int8-weight-only or ort-int4 (etc.): the precision the answers come from.
            "format": getattr(models.active.generator, "format", None),
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
            "reachable": getattr(producer, "broker_reachable", producer.connected) if producer is not None else None,
            "bootstrap": settings.kafka_bootstrap,
            "spool_depth": delivery["spool_depth"] if delivery else 0,
        },
        "delivery": delivery,
    }
    # A degraded pipeline does not make the service unhealthy: HTTP 200 either way.
    return JSONResponse(body, status_code=200)


@router.get("/metrics")
async def prometheus_metrics(service: ServiceDep) -> Response:
    """The service's Prometheus metrics, with the delivery gauges read now."""
    producer, metrics = service.producer, service.metrics
    if producer is not None:
        delivery = service.delivery()
        metrics.spool_depth.set(delivery["spool_depth"])
        metrics.events_lost.set(delivery["lost"])
        metrics.events_pending.set(delivery["pending"])
        metrics.events_dead_lettered.set(delivery["dead_lettered"])
        metrics.events_trimmed.set(delivery["trimmed"])
        metrics.oldest_undelivered.set(delivery["oldest_undelivered_age_s"] or 0.0)
        metrics.kafka_reachable.set(1 if getattr(producer, "broker_reachable", producer.connected) else 0)
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
