"""Follows the models topic so the dashboard can draw every deploy and rollback as a line.

Deploys made through the inference service's admin routes (or by the retraining loop) are
``deploy``/``rollback`` events on ``<namespace>.models``; not every one of them has a row in
``model_versions``. The feed reads the topic from its beginning without a consumer group (one
partition, a handful of events) and keeps the recent ones in memory.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from datetime import timedelta
from typing import Any

from atalaia.events import EventError, ModelEvent, parse_event, utcnow
from atalaia.settings import Settings

log = logging.getLogger(__name__)

#: Events kept in memory (the topic holds commands, not traffic: this is months of deploys).
MAX_EVENTS = 10_000


class ModelEventFeed:
    """A background thread that collects model events; :meth:`events` is safe from any thread."""

    def __init__(self, settings: Settings, retention: timedelta = timedelta(days=31)) -> None:
        self.settings = settings
        self.retention = retention
        self._events: deque[ModelEvent] = deque(maxlen=MAX_EVENTS)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: Set once the events on the topic when the feed connected have all been read.
        self.caught_up = threading.Event()

    def events(self) -> list[ModelEvent]:
        """The model events seen so far within the retention, oldest first."""
        horizon = utcnow() - self.retention
        with self._lock:
            return [ev for ev in self._events if ev.ts >= horizon]

    def add(self, event: ModelEvent) -> None:
        """Record one event (the thread calls this; tests may too)."""
        with self._lock:
            self._events.append(event)

    def start(self) -> ModelEventFeed:
        """Start following the topic in a daemon thread."""
        self._thread = threading.Thread(target=self._run, name="model-event-feed", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread and close its consumer."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        from kafka import KafkaConsumer, TopicPartition

        consumer: Any = None
        ends: dict[Any, int] = {}
        topic = self.settings.topic("models")
        while not self._stop.is_set():
            try:
                if consumer is None:
                    consumer = KafkaConsumer(
                        bootstrap_servers=self.settings.bootstrap_servers,
                        group_id=None,
                        enable_auto_commit=False,
                        client_id="atalaia-monitor-models",
                    )
                    partitions = consumer.partitions_for_topic(topic) or {0}
                    assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
                    consumer.assign(assigned)
                    consumer.seek_to_beginning()
                    ends = consumer.end_offsets(assigned)
                    # A reconnect reads the topic again: start from an empty memory.
                    with self._lock:
                        self._events.clear()
                for records in consumer.poll(timeout_ms=500).values():
                    for record in records:
                        try:
                            self.add(parse_event(record.value, ModelEvent))
                        except EventError as exc:
                            log.warning("dashboard: ignored a malformed model event", extra={"reason": exc.reason})
                if not self.caught_up.is_set() and all(consumer.position(tp) >= end for tp, end in ends.items()):
                    self.caught_up.set()
            except Exception as exc:  # noqa: BLE001 - a broker outage must not end the feed
                log.warning("models topic unavailable to the dashboard; retrying", extra={"error": str(exc)})
                if consumer is not None:
                    consumer.close()
                    consumer = None
                self._stop.wait(5.0)
        if consumer is not None:
            consumer.close()
