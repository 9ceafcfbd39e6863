"""The event SDK: production services call :meth:`EventProducer.emit` and go on.

``emit`` never blocks and never raises for a broker problem: events go through a bounded
in-memory queue to a background thread that sends them to Kafka in batches. When Kafka is
unreachable, or a send finally fails, events are spooled to disk (fsync'd) and replayed in order
once Kafka answers again. Only a disk that refuses the spool loses events, and those are counted
(``stats.lost``) and logged as errors.

Example
-------
>>> from atalaia.settings import Settings
>>> producer = EventProducer(Settings(kafka_bootstrap="127.0.0.1:1"), start=False)
>>> producer.stats.sent
0
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

from atalaia.events import AlertEvent, DeadLetterEvent, FeedbackEvent, InferenceEvent, MetricEvent, ModelEvent
from atalaia.redaction import redact_event
from atalaia.settings import Settings
from producers.spool import Spool, SpooledMessage

log = logging.getLogger(__name__)

_TOPIC_OF: dict[type, str] = {
    InferenceEvent: "inference",
    FeedbackEvent: "feedback",
    MetricEvent: "metrics",
    AlertEvent: "alerts",
    ModelEvent: "models",
    DeadLetterEvent: "deadletter",
}
RECONNECT_EVERY_S = 2.0
REPLAY_CHUNK = 1000
SPOOL_BATCH = 500


@dataclass
class ProducerStats:
    """Counters of what happened to emitted events."""

    emitted: int = 0
    sent: int = 0
    spooled: int = 0
    replayed: int = 0
    lost: int = 0


class EventProducer:
    """Non-blocking, batched event emission with a disk spool.

    Parameters
    ----------
    settings
        Kafka bootstrap, topic namespace, spool directory and batching delay.
    client_id
        Kafka client id; also names the spool file, so two producers never share one.
    queue_size
        Events buffered in memory before ``emit`` spools to disk directly.
    start
        Start the sender thread now (tests pass False to inspect a stopped producer).
    """

    def __init__(
        self, settings: Settings, client_id: str = "atalaia-sdk", queue_size: int = 10_000, start: bool = True
    ) -> None:
        self.settings = settings
        self.client_id = client_id
        assert settings.spool_dir is not None
        self.spool = Spool(settings.spool_dir / f"{client_id}.jsonl")
        self.stats = ProducerStats()
        self._queue: queue.Queue[SpooledMessage] = queue.Queue(maxsize=queue_size)
        self._producer: Any = None
        # Set when a send fails: later events go straight to the spool until a replay succeeds,
        # so an outage costs one blocked send, not one per event.
        self._degraded = False
        # Sent but not yet acknowledged: spooled at close if still unconfirmed (a duplicate is
        # harmless downstream, where writes are idempotent on event_id; a loss is not).
        self._in_flight: dict[int, SpooledMessage] = {}
        self._next_id = 0
        # The message the sender thread holds between queue and Kafka/spool; close() spools it if
        # the thread is stuck (for example in a blocking metadata fetch) when time runs out.
        self._current: SpooledMessage | None = None
        # Messages taken from the queue to be spooled with the current one in one fsync; close()
        # spools them too if the thread is stuck (a duplicate on disk is harmless, a loss is not).
        self._held: list[SpooledMessage] = []
        self._last_connect = 0.0
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"{client_id}-sender", daemon=True)
        if start:
            self._thread.start()

    # -- public API -------------------------------------------------------------------------
    def emit(self, event: Any, topic: str | None = None) -> None:
        """Queue ``event`` for delivery; returns at once, whatever the broker's state."""
        name = topic or self.settings.topic(_TOPIC_OF[type(event)])
        if self.settings.redact_pii:
            # Before serialisation: personal data never reaches Kafka, the spool or the database.
            event, _ = redact_event(event)
        message = SpooledMessage(name, event.key, event.to_json())
        self.stats.emitted += 1
        try:
            self._queue.put_nowait(message)
        except queue.Full:
            self._spool(message)

    @property
    def connected(self) -> bool:
        """Whether the last delivery attempt reached Kafka (False while events are being spooled)."""
        return self._producer is not None and not self._degraded

    @property
    def spool_depth(self) -> int:
        """Events waiting on disk for the broker."""
        return len(self.spool)

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until queued events are sent or spooled; True if the queue drained in time."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)
        if self._producer is not None:
            try:
                self._producer.flush(timeout=max(deadline - time.monotonic(), 0.1))
            except Exception:
                log.debug("flush incomplete", exc_info=True)
        return self._queue.unfinished_tasks == 0

    def close(self, timeout: float = 30.0) -> None:
        """Deliver or spool everything queued, then stop the sender thread."""
        deadline = time.monotonic() + timeout
        self.flush(timeout)
        self._closed.set()
        if self._thread.is_alive():
            self._thread.join(max(deadline - time.monotonic(), 0.1))
        # Whatever the sender could not take in time goes to disk: closing never drops events.
        while True:
            try:
                self._spool(self._queue.get_nowait())
                self._queue.task_done()
            except queue.Empty:
                break
        if self._producer is not None:
            try:
                self._producer.close(timeout=5)
            except Exception:
                log.debug("producer close failed", exc_info=True)
            self._producer = None
        with self._lock:
            head = [self._current] if self._current is not None else []
            unconfirmed = [*head, *self._held, *self._in_flight.values()]
            self._current = None
            self._held = []
            self._in_flight.clear()
        for message in unconfirmed:
            self._spool(message)

    # -- sender thread ----------------------------------------------------------------------
    def _spool(self, message: SpooledMessage) -> None:
        try:
            self.spool.append(message)
            self.stats.spooled += 1
        except OSError as exc:
            self.stats.lost += 1
            log.error(
                "event lost: spool unwritable",
                extra={"topic": message.topic, "spool": str(self.spool.path), "error": str(exc)},
            )

    def _spool_batch(self, first: SpooledMessage) -> None:
        """Spool ``first`` and whatever else is queued (up to ``SPOOL_BATCH``) with one fsync, in order."""
        drained: list[SpooledMessage] = []
        while len(drained) < SPOOL_BATCH - 1:
            try:
                drained.append(self._queue.get_nowait())
            except queue.Empty:
                break
        with self._lock:
            self._held = drained
        batch = [first, *drained]
        try:
            self.spool.append_many(batch)
            self.stats.spooled += len(batch)
        except OSError as exc:
            self.stats.lost += len(batch)
            log.error(
                "event lost: spool unwritable",
                extra={"events": len(batch), "spool": str(self.spool.path), "error": str(exc)},
            )
        finally:
            with self._lock:
                self._held = []
            for _ in drained:
                self._queue.task_done()

    def _connect(self) -> None:
        if self._producer is not None or time.monotonic() - self._last_connect < RECONNECT_EVERY_S:
            return
        self._last_connect = time.monotonic()
        from atalaia.kafka import clients

        try:
            self._producer = clients.producer(
                self.settings,
                self.client_id,
                acks="all",
                linger_ms=self.settings.producer_linger_ms,
                max_block_ms=5_000,
                bootstrap_timeout_ms=3_000,
                delivery_timeout_ms=30_000,
                request_timeout_ms=10_000,
                reconnect_backoff_max_ms=2_000,
            )
        except Exception as exc:  # noqa: BLE001 - bad address or broker down: spool and keep trying
            self._mark_degraded(exc)
        # Count the pause from the end of the attempt: a failed bootstrap itself takes seconds.
        self._last_connect = time.monotonic()

    def _mark_degraded(self, exc: BaseException) -> None:
        if not self._degraded:
            log.warning(
                "kafka unreachable; spooling events to disk",
                extra={"bootstrap": self.settings.kafka_bootstrap, "spool": str(self.spool.path), "error": str(exc)},
            )
        self._degraded = True

    def _claim(self, message: SpooledMessage) -> bool:
        """Take the held message for delivery; False if close() already spooled it."""
        with self._lock:
            if self._current is not message:
                return False
            self._current = None
            return True

    def _send(self, message: SpooledMessage) -> None:
        with self._lock:
            if self._current is not message:
                return
            self._current = None
            self._next_id += 1
            ident = self._next_id
            self._in_flight[ident] = message
        try:
            future = self._producer.send(message.topic, key=message.key, value=message.value)
        except Exception:
            raise  # _recover() spools it from _in_flight
        future.add_callback(lambda _md: self._on_sent(ident))
        future.add_errback(lambda exc: self._on_failed(ident, exc))

    def _recover(self, message: SpooledMessage) -> None:
        """Spool a message whose send raised, unless close() or an errback already did."""
        with self._lock:
            held = self._current is message
            if held:
                self._current = None
            ident = next((k for k, v in self._in_flight.items() if v is message), None)
            if ident is not None:
                del self._in_flight[ident]
        if held or ident is not None:
            self._spool(message)

    def _on_sent(self, ident: int) -> None:
        with self._lock:
            if self._in_flight.pop(ident, None) is not None:
                self.stats.sent += 1

    def _on_failed(self, ident: int, exc: Exception) -> None:
        with self._lock:
            message = self._in_flight.pop(ident, None)
        self._mark_degraded(exc)
        if message is not None:
            self._spool(message)

    def _replay(self) -> None:
        """Send spooled events in order, a chunk at a time; stop at the first failure.

        A chunk is sent as one batch and then confirmed message by message: waiting for each
        message before sending the next cost a round trip plus ``linger_ms`` apiece (43 events/s
        measured), slower than moderate traffic, so a spool could never drain.
        """
        pending = self.spool.read()
        delivered = 0
        try:
            for start in range(0, len(pending), REPLAY_CHUNK):
                chunk = pending[start : start + REPLAY_CHUNK]
                futures = [self._producer.send(m.topic, key=m.key, value=m.value) for m in chunk]
                self._producer.flush(timeout=30)
                for future in futures:
                    future.get(timeout=15)  # in order: what follows a failure is sent again later
                    delivered += 1
        except Exception as exc:  # noqa: BLE001 - still down: keep the rest for later
            self._mark_degraded(exc)
        else:
            if self._degraded:
                log.info("kafka reachable again", extra={"bootstrap": self.settings.kafka_bootstrap})
            self._degraded = False
        if delivered:
            self.spool.drop_first(delivered)
            self.stats.replayed += delivered
            self.stats.sent += delivered
            log.info("spool replayed", extra={"delivered": delivered, "left": len(self.spool)})

    def _run(self) -> None:
        last_replay = 0.0
        while not (self._closed.is_set() and self._queue.empty()):
            try:
                message: SpooledMessage | None = self._queue.get(timeout=0.2)
            except queue.Empty:
                message = None
            with self._lock:
                self._current = message
            try:
                self._connect()
                due = time.monotonic() - last_replay > RECONNECT_EVERY_S
                if self._producer is not None and (self._degraded or len(self.spool)) and due:
                    last_replay = time.monotonic()
                    self._replay()
                if message is not None:
                    # While older events wait on disk, newer ones queue behind them to keep order.
                    if self._producer is None or self._degraded or len(self.spool):
                        if self._claim(message):
                            self._spool_batch(message)
                    else:
                        self._send(message)
            except Exception as exc:  # noqa: BLE001 - the sender thread must survive anything
                self._mark_degraded(exc)
                if message is not None:
                    self._recover(message)
            finally:
                if message is not None:
                    self._queue.task_done()
