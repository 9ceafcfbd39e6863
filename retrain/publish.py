"""Publishing model lifecycle events (``deploy``/``rollback``) on the models topic."""

from __future__ import annotations

import logging
import time

from atalaia.events import ModelEvent
from atalaia.settings import Settings

log = logging.getLogger(__name__)


class PublishError(RuntimeError):
    """The models topic could not be reached within the deadline."""


def publish_model_event(settings: Settings, event: ModelEvent, *, deadline_s: float = 120.0) -> None:
    """Send ``event`` to ``atalaia.models`` and wait for the broker's acknowledgement.

    Retries with backoff until ``deadline_s``; then raises :class:`PublishError` so the caller
    records the step as failed rather than believing a deploy happened.
    """
    from kafka import KafkaProducer

    delay = 1.0
    started = time.monotonic()
    last: Exception | None = None
    while time.monotonic() - started < deadline_s:
        producer = None
        try:
            producer = KafkaProducer(
                bootstrap_servers=settings.bootstrap_servers,
                acks="all",
                client_id="atalaia-retrain",
                request_timeout_ms=15_000,
            )
            producer.send(settings.topic("models"), key=event.key, value=event.to_json()).get(timeout=30)
            producer.flush(timeout=10)
            log.info(
                "model event published",
                extra={"type": event.type, "model_version": event.model_version, "event_id": str(event.event_id)},
            )
            return
        except Exception as exc:  # noqa: BLE001 - a broker outage is retried until the deadline
            last = exc
            log.warning("models topic unavailable; retrying", extra={"error": str(exc), "retry_in_s": delay})
            time.sleep(delay)
            delay = min(delay * 2, 15.0)
        finally:
            if producer is not None:
                producer.close(timeout=5)
    raise PublishError(
        f"could not publish {event.type} of {event.model_version} to {settings.topic('models')} within "
        f"{deadline_s:.0f} s: {last}. Fix: check ATALAIA_KAFKA_BOOTSTRAP={settings.kafka_bootstrap} is reachable"
    )
