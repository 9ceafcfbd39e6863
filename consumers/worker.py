"""The faust worker: consumes ``inference`` and ``feedback`` events, stores them with their metrics.

Effect exactly once: a batch's rows are written (idempotently) before its offsets are acked, and
a database outage is retried with backoff instead of skipping the batch.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import faust
from faust.types import EventT

from atalaia.deadletter import dead_letter_for
from atalaia.events import EventError, FeedbackEvent, InferenceEvent, MetricEvent, parse_event
from atalaia.metrics.operational import metric_events, operational_values
from atalaia.settings import Settings
from atalaia.storage import repository
from atalaia.storage.db import get_engine, redact_url

log = logging.getLogger(__name__)

BATCH_SIZE = 200
BATCH_WITHIN_S = 0.5
MAX_BACKOFF_S = 30.0

E = TypeVar("E", InferenceEvent, FeedbackEvent)


def split_valid(events: Sequence[EventT], expected: type[E], consumer: str) -> tuple[list[E], list[Any]]:
    """Parse a batch: valid events of the expected type, and dead-letter records for the rest."""
    valid: list[E] = []
    dead = []
    for ev in events:
        msg = ev.message
        raw = ev.value if isinstance(ev.value, bytes) else msg.value
        if not isinstance(raw, bytes | str):
            raw = b""  # a tombstone (null value): dead-lettered as "not valid JSON"
        try:
            valid.append(parse_event(raw, expected))
        except EventError as exc:
            dead.append(dead_letter_for(raw, exc.reason, msg.topic, msg.partition, msg.offset, exc.field, consumer))
    return valid, dead


def score_inference(events: Sequence[InferenceEvent]) -> list[MetricEvent]:
    """Compute the metrics of a batch; a metric failing on one event is recorded, not raised."""
    out: list[MetricEvent] = []
    for event in events:
        try:
            out.extend(metric_events(event, dict(operational_values(event))))
        except Exception as exc:  # noqa: BLE001 - one bad event must not stop the stream
            out.extend(metric_events(event, {}, {"latency_ms": f"{type(exc).__name__}: {exc}"}))
    return out


async def retry_forever(what: str, fn: Callable[[], Any], app: faust.App) -> Any:
    """Run blocking ``fn`` in a thread until it succeeds, backing off exponentially.

    Offsets of the batch are acked only after this returns, so an outage delays but never loses.
    """
    delay = 0.5
    attempt = 0
    loop = asyncio.get_running_loop()
    while True:
        attempt += 1
        try:
            return await loop.run_in_executor(None, fn)
        except Exception as exc:  # noqa: BLE001 - any storage failure is retried
            log.warning(
                "storage write failed; retrying",
                extra={"what": what, "attempt": attempt, "retry_in_s": delay, "error": f"{type(exc).__name__}: {exc}"},
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF_S)


def create_app(settings: Settings) -> faust.App:
    """Build the faust application with its agents."""
    app = faust.App(
        settings.worker_id,
        broker=[f"kafka://{s}" for s in settings.bootstrap_servers],
        value_serializer="raw",
        key_serializer="raw",
        web_host="127.0.0.1",
        web_port=settings.worker_web_port,
        web_bind="127.0.0.1",
        topic_partitions=settings.topic_partitions,
        topic_allow_declare=False,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=10.0,
        broker_heartbeat_interval=1.0,
        broker_commit_every=100,
        broker_commit_interval=1.0,
        producer_acks=-1,
        store="memory://",
        datadir=str(settings.home / "faust"),
        web_enabled=True,
    )
    engine = get_engine(settings.database_url)
    consumer_name = settings.worker_id
    inference_topic = app.topic(settings.topic("inference"), value_type=bytes, value_serializer="raw")
    feedback_topic = app.topic(settings.topic("feedback"), value_type=bytes, value_serializer="raw")
    metrics_topic = app.topic(settings.topic("metrics"), value_serializer="raw")
    deadletter_topic = app.topic(settings.topic("deadletter"), value_serializer="raw")
    log.info(
        "worker configured",
        extra={
            "app_id": settings.worker_id,
            "database": redact_url(settings.database_url),
            "kafka": settings.kafka_bootstrap,
        },
    )

    async def send_dead(dead: Sequence[Any]) -> None:
        for record in dead:
            log.warning(
                "dead-lettered",
                extra={"reason": record.reason, "topic": record.source_topic, "offset": record.source_offset},
            )
            await deadletter_topic.send(key=record.key, value=record.to_json())

    @app.agent(inference_topic, name="score-inference")
    async def score(stream: faust.StreamT[bytes]) -> None:
        async for batch in stream.take_events(BATCH_SIZE, within=BATCH_WITHIN_S):  # type: ignore[attr-defined]
            valid, dead = split_valid(batch, InferenceEvent, consumer_name)
            await send_dead(dead)
            if not valid:
                continue
            metrics = score_inference(valid)

            def write(valid: list[InferenceEvent] = valid, metrics: list[MetricEvent] = metrics) -> tuple[int, int]:
                with engine.begin() as conn:
                    return repository.store_inference_batch(conn, valid, metrics)

            new_events, new_metrics = await retry_forever("inference batch", write, app)
            # Publish after the commit: a metric on the topic always has its row in the table.
            for m in metrics:
                await metrics_topic.send(key=str(m.source_event_id).encode(), value=m.to_json())
            log.info("batch stored", extra={"events": len(valid), "new_events": new_events, "new_metrics": new_metrics})

    @app.agent(feedback_topic, name="store-feedback")
    async def store_feedback(stream: faust.StreamT[bytes]) -> None:
        async for batch in stream.take_events(BATCH_SIZE, within=BATCH_WITHIN_S):  # type: ignore[attr-defined]
            valid, dead = split_valid(batch, FeedbackEvent, consumer_name)
            await send_dead(dead)
            if not valid:
                continue

            def write_feedback(valid: list[FeedbackEvent] = valid) -> int:
                with engine.begin() as conn:
                    return repository.store_feedback_batch(conn, valid)

            await retry_forever("feedback batch", write_feedback, app)

    return app


def run_worker(settings: Settings) -> None:
    """Run the worker in the foreground until SIGINT/SIGTERM."""
    from faust.worker import Worker

    from atalaia.logs import logging_dict_config

    app = create_app(settings)
    # faust resets logging when it starts: hand it ours, and no spinner (logs are often files).
    worker = Worker(
        app,
        loglevel=settings.log_level,
        logging_config=logging_dict_config(settings.log_level, settings.log_json),
        quiet=True,
    )
    worker.execute_from_commandline()
