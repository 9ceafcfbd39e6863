"""The worker's health and Prometheus endpoints: its consumer group's lag and its last commit.

Served by faust's own web server (``ATALAIA_WORKER_WEB_PORT``) beside faust's pages:
``GET /healthz`` answers JSON (``consumer``: ``group``, ``lag``, ``oldest_waiting_age_s`` — how
long the oldest event not yet stored has waited —, ``last_commit_age_s``, ``error``) and
``GET /metrics`` Prometheus text (``atalaia_consumer_lag``,
``atalaia_consumer_oldest_waiting_age_seconds``, ``atalaia_consumer_last_commit_age_seconds``,
``atalaia_consumer_lag_probe_ok``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import faust
from faust.sensors import Sensor

from atalaia.kafka.lag import ConsumerHealth
from atalaia.settings import Settings


class CommitSensor(Sensor):
    """Tells :class:`ConsumerHealth` when faust committed offsets.

    faust calls ``on_commit_completed`` after every commit attempt (about every second), with or
    without offsets to commit: a commit is one that changed a committed offset since the attempt
    began (``on_commit_initiated``'s snapshot).
    """

    def __init__(self, health: ConsumerHealth, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.health = health

    @staticmethod
    def _committed(consumer: Any) -> dict[Any, int]:
        return {tp: o for tp, o in dict(getattr(consumer, "_committed_offset", {})).items() if o is not None}

    def on_commit_initiated(self, consumer: Any) -> Any:
        """Snapshot the committed offsets before the attempt."""
        return self._committed(consumer)

    def on_commit_completed(self, consumer: Any, state: Any) -> None:
        """Record the commit if an offset changed during the attempt."""
        before = state if isinstance(state, dict) else {}
        after = self._committed(consumer)
        if any(before.get(tp) != o for tp, o in after.items()):
            self.health.committed()


def install(
    app: faust.App, settings: Settings, topics: list[str], extra: Callable[[], bytes] | None = None
) -> ConsumerHealth:
    """Add the commit sensor, ``/healthz`` and ``/metrics`` to the worker ``app``; sample while it runs.

    ``extra``: more Prometheus text for the same ``/metrics`` page (the scorer's budget and groups).
    """
    health = ConsumerHealth(
        settings, settings.worker_id, topics, settings.pipeline_health_every_s, client_id=f"{settings.worker_id}-lag"
    )
    app.sensors.add(CommitSensor(health))

    @app.page("/healthz")
    async def healthz(web: Any, request: Any) -> Any:
        return web.json({"status": "ok", "consumer": health.as_dict()})

    @app.page("/metrics")
    async def metrics(web: Any, request: Any) -> Any:
        body = health.prometheus().encode() + (extra() if extra is not None else b"")
        return web.bytes(body, content_type="text/plain; version=0.0.4")

    @app.task
    async def sample_lag() -> None:
        health.start()

    return health
