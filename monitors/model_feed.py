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

from atalaia.events import ModelEvent, utcnow
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
        from atalaia.kafka.clients import follow

        def restart() -> None:
            # A reconnect reads the topic again: start from an empty memory.
            with self._lock:
                self._events.clear()

        # The feed re-reads the whole topic on every start: it only logs malformed events (the
        # inference instances, which act on them, dead-letter them).
        follow(
            self.settings,
            self.settings.topic("models"),
            ModelEvent,
            lambda event, _msg: self.add(event),
            stop=self._stop,
            client_id="atalaia-monitor-models",
            start="beginning",
            dead_letter=False,
            on_connect=restart,
            on_caught_up=self.caught_up.set,
        )
