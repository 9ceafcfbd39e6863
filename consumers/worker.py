"""The faust worker: consumes ``inference`` and ``feedback`` events, stores them with their metrics.

Effect exactly once: a batch's rows are written (idempotently) before its offsets are acked, and
a database outage is retried with backoff instead of skipping the batch.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import faust
from faust.types import EventT

from atalaia.deadletter import dead_letter_for
from atalaia.events import EventError, FeedbackEvent, InferenceEvent, MetricBatchEvent, MetricEvent, parse_event
from atalaia.kafka import clients
from atalaia.metrics.budget import PIPELINE
from atalaia.settings import Settings
from atalaia.storage import repository, tables
from atalaia.storage.db import get_engine, redact_url
from atalaia.storage.partitions import ensure_partitions
from consumers import health
from consumers.drift import DriftRunner, drift_metrics
from consumers.feedback_signals import feedback_signal_metrics
from consumers.gc_pauses import GcPauses, collector_cpu_seconds, freeze_loaded
from consumers.scoring import BatchScorer, ScoredBatch
from consumers.telemetry import WorkerMetrics
from consumers.windows import materialize

log = logging.getLogger(__name__)

BATCH_SIZE = 200
BATCH_WITHIN_S = 0.5
MAX_BACKOFF_S = 30.0
WINDOW_S = 60
WINDOWS_EVERY_S = 10.0
PARTITIONS_EVERY_S = 3600.0

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


def _correction_metric(
    fb: FeedbackEvent, row: Any, name: str, value: float | None, error: str | None = None
) -> MetricEvent:
    source = fb.inference_event_id
    return MetricEvent(
        event_id=MetricEvent.id_for(source, name),
        source_event_id=source,
        source_ts=repository.as_utc(row["ts"]) if row is not None else fb.ts,
        service=row["service"] if row is not None else "",
        model_version=row["model_version"] if row is not None else "",
        name=name,
        value=value,
        error=error,
        labels={"feedback_event_id": str(fb.event_id)},
    )


def correction_metrics(conn: Any, feedback: Sequence[FeedbackEvent], text: Any) -> list[MetricEvent]:
    """Text overlap of each corrected answer with the response it corrects (``correction_*`` metrics).

    Keyed on the inference event, so they line up with that event's other scores.
    """
    from sqlalchemy import select

    from atalaia.storage import tables as t

    out: list[MetricEvent] = []
    for fb in feedback:
        if not fb.corrected_answer:
            continue
        row = (
            conn.execute(select(t.inference_events).where(t.inference_events.c.event_id == str(fb.inference_event_id)))
            .mappings()
            .first()
        )
        metric = functools.partial(_correction_metric, fb, row)
        if row is None:
            out.append(metric("correction_rougeL", None, "the corrected inference event is not stored"))
            continue
        try:
            scores = text.score(row["response"], fb.corrected_answer)
        except Exception as exc:  # noqa: BLE001 - e.g. an empty response: recorded, not raised
            out.append(metric("correction_rougeL", None, f"{type(exc).__name__}: {exc}"[:500]))
            continue
        out.extend(metric(f"correction_{name}", value) for name, value in scores.items())
    return out


async def publish_metrics(topic: Any, metrics: Sequence[MetricEvent]) -> None:
    """Publish metrics compactly: one ``metric_batch`` message per up to 50 scored events."""
    for key, value in MetricBatchEvent.pack_json(metrics):
        await topic.send(key=key, value=value)


async def retry_forever(what: str, fn: Callable[[], Any]) -> Any:
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


def create_app(settings: Settings, scorer: BatchScorer | None = None) -> faust.App:
    """Build the faust application with its agents."""
    app: faust.App = clients.faust_app(
        settings,
        settings.worker_id,
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
    scorer = scorer or BatchScorer(settings)
    drift = DriftRunner(settings) if "drift" in settings.enabled_groups else None
    telemetry = WorkerMetrics()
    inference_topic = app.topic(settings.topic("inference"), value_type=bytes, value_serializer="raw")
    feedback_topic = app.topic(settings.topic("feedback"), value_type=bytes, value_serializer="raw")
    metrics_topic = app.topic(settings.topic("metrics"), value_serializer="raw")
    deadletter_topic = app.topic(settings.topic("deadletter"), value_serializer="raw")
    # Consumer lag and the age of the last commit on GET /healthz and /metrics (consumers/health.py);
    # the same /metrics page carries the scoring budget, each group's cost and sampling fraction.
    health.install(app, settings, [settings.topic("inference"), settings.topic("feedback")], telemetry.render)
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

    gc_pauses = GcPauses().install()

    @app.agent(inference_topic, name="score-inference")
    async def score(stream: faust.StreamT[bytes]) -> None:
        loop = asyncio.get_running_loop()
        async for batch in stream.take_events(BATCH_SIZE, within=BATCH_WITHIN_S):  # type: ignore[attr-defined]
            started_cpu, started, started_gc = time.process_time(), time.perf_counter(), collector_cpu_seconds()
            valid, dead = split_valid(batch, InferenceEvent, consumer_name)
            await send_dead(dead)
            if not valid:
                continue
            # Model inference is CPU work: off the event loop, so heartbeats keep flowing.
            scoring_cpu, scoring_at, scoring_gc = time.process_time(), time.perf_counter(), collector_cpu_seconds()
            scored = await loop.run_in_executor(None, scorer.score, valid)
            scoring_cpu, written_at = time.process_time() - scoring_cpu, time.perf_counter()
            scoring_gc = collector_cpu_seconds() - scoring_gc  # the scorer accounted these itself

            def write(
                valid: list[InferenceEvent] = valid, scored: ScoredBatch = scored
            ) -> tuple[int, int, list[MetricEvent]]:
                with engine.begin() as conn:
                    new = repository.store_inference_batch(conn, valid, scored.metrics)
                    repository.insert_ignoring_duplicates(conn, tables.embeddings, scored.embeddings)
                    extra: list[MetricEvent] = []
                    if drift is not None:
                        for test in drift.run(conn, {ev.model_version for ev in valid}):
                            extra.extend(drift_metrics(test, scorer.fraction("drift")))
                            if test.drift:
                                log.warning(
                                    "embedding drift",
                                    extra={
                                        "model_version": test.model_version,
                                        "score": test.score,
                                        "threshold": test.threshold,
                                    },
                                )
                        repository.insert_ignoring_duplicates(
                            conn, tables.metrics, [repository.metric_row(m) for m in extra]
                        )
                    return new[0], new[1], extra

            new_events, new_metrics, extra = await retry_forever("inference batch", write)
            published_at = time.perf_counter()
            # Publish after the commit: a metric on the topic always has its row in the table.
            await publish_metrics(metrics_topic, [*scored.metrics, *extra])
            # The batch's CPU outside scoring (parse, write, publish) counts against the budget like
            # a cheap group: at 200 events/s it is a fifth of a core the sampling must leave free.
            # Collector pauses outside scoring are the heap's too (see ScoringBudget.pause).
            pipeline_gc = collector_cpu_seconds() - started_gc - scoring_gc
            scorer.budget.pause(pipeline_gc)
            scorer.budget.observe(PIPELINE, time.process_time() - started_cpu - scoring_cpu - pipeline_gc, len(valid))
            telemetry.observe(scorer, len(valid))
            done = time.perf_counter()
            log.info(
                "batch stored",
                extra={
                    "events": len(valid),
                    "new_events": new_events,
                    "new_metrics": new_metrics,
                    # Wall seconds per step: where a batch's time goes when the lag grows.
                    "seconds": {
                        "parse": round(scoring_at - started, 4),
                        "score": round(written_at - scoring_at, 4),
                        "write": round(published_at - written_at, 4),
                        "publish": round(done - published_at, 4),
                    },
                    "groups": {name: {"seconds": sec, "scored": n} for name, (sec, n) in scored.groups.items()},
                    "fractions": scorer.budget.fractions(),
                    "gc_seconds": {str(g): round(sec, 4) for g, sec in gc_pauses.take().items()},
                },
            )

    @app.agent(feedback_topic, name="store-feedback")
    async def store_feedback(stream: faust.StreamT[bytes]) -> None:
        async for batch in stream.take_events(BATCH_SIZE, within=BATCH_WITHIN_S):  # type: ignore[attr-defined]
            valid, dead = split_valid(batch, FeedbackEvent, consumer_name)
            await send_dead(dead)
            if not valid:
                continue

            def write_feedback(valid: list[FeedbackEvent] = valid) -> list[MetricEvent]:
                with engine.begin() as conn:
                    repository.store_feedback_batch(conn, valid)
                    metrics = correction_metrics(conn, valid, scorer.text) if "text" in scorer.groups else []
                    metrics += feedback_signal_metrics(conn, valid)
                    repository.insert_ignoring_duplicates(
                        conn, tables.metrics, [repository.metric_row(m) for m in metrics]
                    )
                    return metrics

            metrics = await retry_forever("feedback batch", write_feedback)
            await publish_metrics(metrics_topic, metrics)

    @app.timer(interval=PARTITIONS_EVERY_S, on_leader=False)
    async def create_partitions() -> None:
        # Weeks ahead exist before their rows come (the default partition would take them anyway).
        def run() -> list[str]:
            with engine.begin() as conn:
                return ensure_partitions(conn)

        try:
            await asyncio.get_running_loop().run_in_executor(None, run)
        except Exception as exc:  # noqa: BLE001 - retried on the next tick; the default partition holds rows
            log.warning("partition maintenance failed", extra={"error": f"{type(exc).__name__}: {exc}"})

    @app.timer(interval=WINDOWS_EVERY_S)
    async def materialize_windows() -> None:
        def run() -> int:
            with engine.begin() as conn:
                return materialize(conn, WINDOW_S)

        try:
            await asyncio.get_running_loop().run_in_executor(None, run)
        except Exception as exc:  # noqa: BLE001 - retried on the next tick; aggregates are derived data
            log.warning("window aggregation failed", extra={"error": f"{type(exc).__name__}: {exc}"})

    return app


def run_worker(settings: Settings) -> None:
    """Run the worker in the foreground until SIGINT/SIGTERM."""
    from faust.worker import Worker

    from atalaia.logs import logging_dict_config

    # aiokafka retries refused credentials for ever: check them once, to fail at start.
    clients.check_credentials(settings)
    try:  # this week's partitions and the next ones' (PostgreSQL; nothing on SQLite)
        with get_engine(settings.database_url).begin() as conn:
            ensure_partitions(conn)
    except Exception as exc:  # noqa: BLE001 - a database outage is the write path's to retry; the timer tries again
        log.warning("partition maintenance failed", extra={"error": f"{type(exc).__name__}: {exc}"})
    scorer = BatchScorer(settings)
    started = time.perf_counter()
    scorer.warm_up()  # load the models before joining the group, not inside the first batch
    freeze_loaded()  # the models live as long as the process: full collections need not walk them
    log.info(
        "models loaded", extra={"groups": sorted(scorer.groups), "seconds": round(time.perf_counter() - started, 1)}
    )
    app = create_app(settings, scorer)
    # faust resets logging when it starts: hand it ours, and no spinner (logs are often files).
    worker = Worker(
        app,
        loglevel=settings.log_level,
        logging_config=logging_dict_config(settings.log_level, settings.log_json),
        quiet=True,
    )
    worker.execute_from_commandline()
