"""The event SDK: production services call :meth:`EventProducer.emit` and go on.

``emit`` never blocks and never raises for a broker problem: events go through a bounded
in-memory queue to a background thread that sends them to Kafka in batches. When Kafka is
unreachable, or a send finally fails, events are spooled to disk (fsync'd) and replayed in order
once Kafka answers again. Only a disk that refuses the spool (or a spool at its size cap) loses
events, and those are counted (``stats.lost``) and logged as errors.

An event that cannot be delivered never blocks those that can:

- size is checked at :meth:`EventProducer.emit`: an inference event over the limit (the parser's
  ``MAX_EVENT_BYTES``, or the broker's message size from ``ATALAIA_KAFKA_MAX_MESSAGE_BYTES`` if
  smaller) has its longest texts shortened with a marker (:func:`atalaia.event_fit.shrink_event`,
  flagged ``metadata.atalaia_truncated``); any event still over it has its ``metadata`` replaced
  by a marker ``{"atalaia_trimmed": {...}}`` (both counted in ``stats.trimmed``); one still over
  the limit is refused into the local dead-letter file;
- errors no retry can cure (message too large, invalid topic) send the event to the local
  dead-letter file with the reason (``stats.dead_lettered``), never to the spool, where it would
  hold up the replay; replay moves such a record aside the same way;
- an event handed to Kafka and not acknowledged within ``producer_in_flight_timeout_s`` is spooled.

Example
-------
>>> from atalaia.settings import Settings
>>> producer = EventProducer(Settings(kafka_bootstrap="127.0.0.1:1"), start=False)
>>> producer.stats.sent
0
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

from kafka import errors as kafka_errors

from atalaia.event_fit import shrink_event
from atalaia.events import (
    MAX_EVENT_BYTES,
    AlertEvent,
    DeadLetterEvent,
    FeedbackEvent,
    InferenceEvent,
    MetricEvent,
    ModelEvent,
)
from atalaia.redaction import redact_event
from atalaia.settings import Settings
from producers.deadletter import LocalDeadLetter
from producers.spool import Spool, SpooledMessage, SpoolFullError

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
# Room for the record's key, headers and batch framing under the broker's message limit.
RECORD_OVERHEAD_BYTES = 1024
# Errors tied to the record itself: retrying never helps, so the event is dead-lettered locally.
_POISON_ERRORS: tuple[type[BaseException], ...] = (
    kafka_errors.MessageSizeTooLargeError,
    kafka_errors.RecordListTooLargeError,
    kafka_errors.InvalidTopicError,
    ValueError,
    TypeError,
)


def is_poison(exc: BaseException) -> bool:
    """Whether ``exc`` says the record can never be delivered (as opposed to "not now").

    >>> is_poison(kafka_errors.MessageSizeTooLargeError()), is_poison(kafka_errors.KafkaTimeoutError())
    (True, False)
    """
    return isinstance(exc, _POISON_ERRORS)


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


@dataclass
class ProducerStats:
    """Counters of what happened to emitted events."""

    emitted: int = 0
    sent: int = 0
    spooled: int = 0
    replayed: int = 0
    lost: int = 0
    #: Events made to fit the size limit (texts shortened or metadata replaced by a marker), still delivered.
    trimmed: int = 0
    #: Events Kafka can never take, written to the local dead-letter file with the reason.
    dead_lettered: int = 0
    #: Events handed to Kafka, unacknowledged past their deadline, and spooled.
    expired: int = 0
    #: Kafka clients dropped and rebuilt because they held records without settling them.
    recycled: int = 0


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
        self.spool = Spool(settings.spool_dir / f"{client_id}.jsonl", max_bytes=settings.spool_max_bytes)
        self.dead_letter = LocalDeadLetter(settings.spool_dir / f"{client_id}.deadletter.jsonl")
        #: Largest event emitted as is: the parser's limit, or the broker's if that is smaller.
        self.max_event_bytes = min(MAX_EVENT_BYTES, settings.kafka_max_message_bytes - RECORD_OVERHEAD_BYTES)
        self.stats = ProducerStats()
        self._queue: queue.Queue[SpooledMessage] = queue.Queue(maxsize=queue_size)
        self._producer: Any = None
        # Set when a send fails: later events go straight to the spool until a replay succeeds,
        # so an outage costs one blocked send, not one per event.
        self._degraded = False
        # Sent but not yet acknowledged: spooled at close if still unconfirmed (a duplicate is
        # harmless downstream, where writes are idempotent on event_id; a loss is not).
        # Each with its send time (monotonic): past ``producer_in_flight_timeout_s`` it is spooled,
        # since the client's own expiry can stall (an idempotent producer stops expiring batches
        # after resetting its producer id, until the broker answers again).
        self._in_flight: dict[int, tuple[SpooledMessage, float]] = {}
        self._next_id = 0
        # The message the sender thread holds between queue and Kafka/spool; close() spools it if
        # the thread is stuck (for example in a blocking metadata fetch) when time runs out.
        self._current: SpooledMessage | None = None
        # Messages taken from the queue to be spooled with the current one in one fsync; close()
        # spools them too if the thread is stuck (a duplicate on disk is harmless, a loss is not).
        self._held: list[SpooledMessage] = []
        self._last_connect = 0.0
        # Monotonic times of the last answer from the broker and the last retriable failure:
        # whether the broker is reachable is told apart from whether events are flowing.
        self._last_ok = 0.0
        self._last_error = 0.0
        self._closed = threading.Event()
        self._lock = threading.Lock()
        # Events that found the queue full: emit() only appends here (no disk I/O on the caller's
        # thread, which is the API's event loop); the overflow thread group-commits them.
        self._overflow: list[SpooledMessage] = []
        self._overflow_cv = threading.Condition()
        self._overflow_busy = False
        self._thread = threading.Thread(target=self._run, name=f"{client_id}-sender", daemon=True)
        self._overflow_thread = threading.Thread(target=self._run_overflow, name=f"{client_id}-overflow", daemon=True)
        if start:
            self._thread.start()
            self._overflow_thread.start()

    # -- public API -------------------------------------------------------------------------
    def emit(self, event: Any, topic: str | None = None) -> None:
        """Queue ``event`` for delivery; returns at once, whatever the broker's state."""
        name = topic or self.settings.topic(_TOPIC_OF[type(event)])
        if self.settings.redact_pii:
            # Before serialisation: personal data never reaches Kafka, the spool or the database.
            event, _ = redact_event(event)
        self.stats.emitted += 1
        value, refusal = self._fit(event)
        if value is None:
            self._dead_letter(SpooledMessage(name, event.key, event.to_json()), refusal or "too large")
            return
        message = SpooledMessage(name, event.key, value)
        try:
            self._queue.put_nowait(message)
        except queue.Full:
            with self._overflow_cv:
                self._overflow.append(message)
                self._overflow_cv.notify()

    def _fit(self, event: Any) -> tuple[bytes | None, str | None]:
        """The event's bytes within ``max_event_bytes``: as is, with an inference event's longest
        texts shortened (answered calls are not lost to a long prompt), and/or with its metadata
        replaced by a marker.

        Returns ``(None, reason)`` when even the shortened, trimmed event is too large (refused).
        """
        value: bytes = event.to_json()
        limit = self.max_event_bytes
        if len(value) <= limit:
            return value, None
        original = len(value)
        if isinstance(event, InferenceEvent):
            shrunk = shrink_event(event, limit)
            if shrunk is not None:
                self.stats.trimmed += 1
                log.warning(
                    "event over the size limit: longest texts shortened",
                    extra={"event_id": str(event.event_id), "bytes": original, "limit": limit},
                )
                return shrunk.to_json(), None
        metadata = getattr(event, "metadata", None)
        if metadata:
            meta_bytes = len(json.dumps(metadata, default=str).encode("utf-8"))
            marker = {"atalaia_trimmed": {"metadata_bytes": meta_bytes, "event_bytes": original, "limit": limit}}
            trimmed = event.model_copy(update={"metadata": marker})
            value = trimmed.to_json()
            if len(value) > limit and isinstance(trimmed, InferenceEvent):
                # Large metadata and large texts: shorten the texts of the trimmed event too.
                shrunk = shrink_event(trimmed, limit)
                value = value if shrunk is None else shrunk.to_json()
            if len(value) <= limit:
                self.stats.trimmed += 1
                log.warning(
                    "event over the size limit: metadata replaced by a marker",
                    extra={"event_id": str(event.event_id), "bytes": original, "limit": limit},
                )
                return value, None
        return None, f"event of {original} bytes exceeds the {limit}-byte limit (metadata trimmed: {bool(metadata)})"

    @property
    def connected(self) -> bool:
        """Whether the last delivery attempt reached Kafka (False while events are being spooled)."""
        return self._producer is not None and not self._degraded

    @property
    def broker_reachable(self) -> bool:
        """Whether the broker answered more recently than it failed (a poison record is no failure)."""
        return self._producer is not None and self._last_ok >= self._last_error

    @property
    def spool_depth(self) -> int:
        """Events waiting on disk for the broker."""
        return len(self.spool)

    @property
    def pending(self) -> int:
        """Events in memory not yet acknowledged: queued, waiting to be spooled, or sent and unconfirmed."""
        with self._lock:
            in_flight = len(self._in_flight)
        return self._queue.qsize() + len(self._overflow) + in_flight

    def oldest_undelivered_age_s(self) -> float | None:
        """Seconds since the oldest event not yet acknowledged by Kafka was created (None: none)."""
        created: list[float] = []
        with self._lock:
            created += [m.created for m, _ in self._in_flight.values()]
        with self._queue.mutex:
            if self._queue.queue:
                created.append(self._queue.queue[0].created)
        if self._overflow:
            created.append(self._overflow[0].created)
        ages = [time.time() - c for c in created]
        spooled = self.spool.oldest_age_s()
        if spooled is not None:
            ages.append(spooled)
        return max(0.0, max(ages)) if ages else None

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
        with self._overflow_cv:
            self._overflow_cv.notify_all()
        if self._thread.is_alive():
            self._thread.join(max(deadline - time.monotonic(), 0.1))
        if self._overflow_thread.is_alive():
            self._overflow_thread.join(max(deadline - time.monotonic(), 0.1))
        with self._overflow_cv:
            overflow, self._overflow = self._overflow, []
        if overflow:
            self._spool_many(overflow)
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
            unconfirmed = [*head, *self._held, *(m for m, _ in self._in_flight.values())]
            self._current = None
            self._held = []
            self._in_flight.clear()
        for message in unconfirmed:
            self._spool(message)

    # -- sender thread ----------------------------------------------------------------------
    def _spool(self, message: SpooledMessage) -> None:
        self._spool_many([message])

    def _spool_many(self, messages: list[SpooledMessage]) -> None:
        """Spool ``messages`` with one fsync; a refusal (disk, cap) counts them lost and logs an error."""
        try:
            self.spool.append_many(messages)
            self.stats.spooled += len(messages)
        except OSError as exc:
            self.stats.lost += len(messages)
            what = "event lost: spool full" if isinstance(exc, SpoolFullError) else "event lost: spool unwritable"
            log.error(
                what,
                extra={
                    "events": len(messages),
                    "topic": messages[0].topic,
                    "spool": str(self.spool.path),
                    "error": str(exc),
                },
            )

    def _dead_letter(self, message: SpooledMessage, reason: str) -> None:
        if self.dead_letter.add(message, reason):
            self.stats.dead_lettered += 1
        else:
            self.stats.lost += 1

    def _run_overflow(self) -> None:
        """Group-commit what emit() could not queue, off the caller's thread."""
        while True:
            with self._overflow_cv:
                while not self._overflow and not self._closed.is_set():
                    self._overflow_cv.wait(0.5)
                batch, self._overflow = self._overflow, []
            if batch:
                self._spool_many(batch)
            elif self._closed.is_set():
                return

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
            self._spool_many(batch)
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
                max_request_size=self.settings.kafka_max_message_bytes,
            )
            self._last_ok = time.monotonic()  # the constructor bootstraps: the broker answered
        except Exception as exc:  # noqa: BLE001 - bad address or broker down: spool and keep trying
            self._mark_degraded(exc)
        # Count the pause from the end of the attempt: a failed bootstrap itself takes seconds.
        self._last_connect = time.monotonic()

    def _recycle(self, why: str) -> None:
        """Drop the Kafka client; the next attempt builds a fresh one.

        A client that took records and never settled them is wedged, not waiting: after broker
        restarts under load, kafka-python's idempotent producer kept retrying a partition that
        answered ``NotLeaderForPartition`` and never delivered again (the spool grew for minutes
        with the broker back). A fresh client gets a fresh producer id and fresh metadata. Its
        unsettled records fail (``IllegalStateError``) and are spooled by their callbacks; a
        duplicate is harmless downstream, a loss is not.
        """
        producer, self._producer = self._producer, None
        if producer is None:
            return
        self.stats.recycled += 1
        log.warning("kafka client recycled", extra={"bootstrap": self.settings.kafka_bootstrap, "reason": why})
        try:
            producer.close(timeout=0)
        except kafka_errors.KafkaTimeoutError:
            # close() flushes first and gives up on the flush's timeout before it force-closes
            # the sender (kafka-python 3.0): force it, or the wedged sender thread lives on.
            sender = getattr(producer, "_sender", None)
            if sender is not None:
                sender.force_close()
        except Exception:  # a client being dropped may fail any way it likes
            log.debug("producer close failed", exc_info=True)
        self._last_connect = 0.0  # reconnect at the next turn of the sender loop

    def _mark_degraded(self, exc: BaseException) -> None:
        self._last_error = time.monotonic()
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
            self._in_flight[ident] = (message, time.monotonic())
        try:
            future = self._producer.send(message.topic, key=message.key, value=message.value)
        except Exception:
            raise  # _send_failed() dead-letters or spools it from _in_flight
        future.add_callback(lambda _md: self._on_sent(ident))
        future.add_errback(lambda exc: self._on_failed(ident, exc))

    def _take(self, message: SpooledMessage) -> bool:
        """Take ``message`` back from the sender's hands; False if close() or a callback already did."""
        with self._lock:
            held = self._current is message
            if held:
                self._current = None
            ident = next((k for k, (v, _) in self._in_flight.items() if v is message), None)
            if ident is not None:
                del self._in_flight[ident]
        return held or ident is not None

    def _send_failed(self, message: SpooledMessage, exc: BaseException) -> None:
        """A send raised: a poison record is dead-lettered (and nothing waits on it); anything else is spooled."""
        if not self._take(message):
            return
        if is_poison(exc):
            self._dead_letter(message, _reason(exc))
        else:
            self._mark_degraded(exc)
            self._spool(message)

    def _expire_in_flight(self, now: float | None = None) -> None:
        """Spool events handed to Kafka and unacknowledged past ``producer_in_flight_timeout_s``."""
        now = time.monotonic() if now is None else now
        limit = self.settings.producer_in_flight_timeout_s
        with self._lock:
            expired = [k for k, (_, sent_at) in self._in_flight.items() if now - sent_at > limit]
            messages = [self._in_flight.pop(k)[0] for k in expired]
        if messages:
            self.stats.expired += len(messages)
            # Degraded: later events queue behind the spooled ones, which keeps their order.
            self._mark_degraded(TimeoutError(f"{len(messages)} events unacknowledged after {limit:.0f} s"))
            self._spool_many(messages)
            # The client's own delivery timeout is shorter: it stopped expiring what it holds.
            self._recycle(f"{len(messages)} events unacknowledged after {limit:.0f} s")

    def _recover(self, message: SpooledMessage) -> None:
        """Spool a message whose send raised, unless close() or an errback already did."""
        with self._lock:
            held = self._current is message
            if held:
                self._current = None
            ident = next((k for k, (v, _) in self._in_flight.items() if v is message), None)
            if ident is not None:
                del self._in_flight[ident]
        if held or ident is not None:
            self._spool(message)

    def _on_sent(self, ident: int) -> None:
        with self._lock:
            if self._in_flight.pop(ident, None) is not None:
                self.stats.sent += 1
        self._last_ok = time.monotonic()

    def _on_failed(self, ident: int, exc: Exception) -> None:
        with self._lock:
            entry = self._in_flight.pop(ident, None)
        if is_poison(exc):  # e.g. the broker's own size limit is lower than ours: this record only
            if entry is not None:
                self._dead_letter(entry[0], _reason(exc))
            return
        self._mark_degraded(exc)
        if entry is not None:
            self._spool(entry[0])

    def _replay(self) -> None:
        """Send spooled events in order, a chunk at a time; stop at the first chunk with a failure.

        A chunk is sent as one batch and then confirmed message by message: waiting for each
        message before sending the next cost a round trip plus ``linger_ms`` apiece (43 events/s
        measured), slower than moderate traffic, so a spool could never drain. Replay waits only
        on its own chunk's futures (not ``producer.flush()``, which waits on every batch of the
        client). Delivered and poison records leave the spool (poison ones to the dead-letter
        file) by moving its read offset, never by rewriting it; only records still owed stay, so
        a failed attempt never keeps a delivered one.
        """
        while len(self.spool):
            records = self.spool.read_records(limit=REPLAY_CHUNK)
            chunk = [r.message for r in records]
            if not chunk:
                break
            futures: dict[int, Any] = {}
            poison: dict[int, BaseException] = {}
            failure: BaseException | None = None
            for i, m in enumerate(chunk):
                try:
                    futures[i] = self._producer.send(m.topic, key=m.key, value=m.value)
                except Exception as exc:  # noqa: BLE001 - classified below
                    if is_poison(exc):
                        poison[i] = exc
                        continue
                    failure = exc
                    break
            deadline = time.monotonic() + self.settings.producer_in_flight_timeout_s
            delivered: list[int] = []
            for i, future in futures.items():
                try:
                    future.get(timeout=max(deadline - time.monotonic(), 0.01))
                    delivered.append(i)
                except Exception as exc:  # noqa: BLE001 - classified below
                    if is_poison(exc):
                        poison[i] = exc
                    elif failure is None:
                        failure = exc
            for i, error in sorted(poison.items()):
                self._dead_letter(chunk[i], _reason(error))
            # One offset write for the chunk (records behind a failed one are blanked in place).
            self.spool.remove_records(records[i] for i in sorted([*delivered, *poison]))
            if delivered:
                self._last_ok = time.monotonic()
                self.stats.replayed += len(delivered)
                self.stats.sent += len(delivered)
                log.info("spool replayed", extra={"delivered": len(delivered), "left": len(self.spool)})
            if failure is not None:  # still down: keep the rest for later
                self._mark_degraded(failure)
                if futures and not delivered:
                    # The client took the chunk and settled none of it in time: it may be wedged.
                    self._recycle(f"replay of {len(futures)} spooled events failed: {_reason(failure)}")
                return
        if self._degraded:
            log.info("kafka reachable again", extra={"bootstrap": self.settings.kafka_bootstrap})
        self._degraded = False

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
                self._expire_in_flight()
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
                        try:
                            self._send(message)
                        except Exception as exc:  # noqa: BLE001 - poison: dead-letter; else spool
                            self._send_failed(message, exc)
            except Exception as exc:  # noqa: BLE001 - the sender thread must survive anything
                self._mark_degraded(exc)
                if message is not None:
                    self._recover(message)
            finally:
                if message is not None:
                    self._queue.task_done()
