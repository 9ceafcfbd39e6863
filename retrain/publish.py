"""Publishing model lifecycle events (``deploy``/``rollback``) on the models topic."""

from __future__ import annotations

import logging

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
    from atalaia.kafka.clients import KafkaAuthError, Publisher
    from atalaia.model_signing import sign

    event = sign(event, settings)  # with ATALAIA_MODEL_EVENTS_SECRET set, inference obeys only signed events
    publisher = Publisher(settings, "atalaia-retrain", linger_ms=0)
    try:
        publisher.publish_retrying(event, settings.topic("models"), deadline_s=deadline_s, what="publish model event")
    except KafkaAuthError:
        raise
    except Exception as exc:  # reported as the step's failure
        raise PublishError(
            f"could not publish {event.type} of {event.model_version} to {settings.topic('models')} within "
            f"{deadline_s:.0f} s: {exc}. Fix: check ATALAIA_KAFKA_BOOTSTRAP={settings.kafka_bootstrap} is reachable"
        ) from exc
    finally:
        try:
            publisher.close()
        except Exception:  # noqa: BLE001 - nothing left to deliver after an acknowledged send
            pass
    log.info(
        "model event published",
        extra={"type": event.type, "model_version": event.model_version, "event_id": str(event.event_id)},
    )
