"""What every alert receiver shares: the notification it is given and how it reports failure."""

from __future__ import annotations

import abc
import logging
from dataclasses import dataclass
from datetime import datetime

import httpx

from atalaia.events import AlertEvent

log = logging.getLogger(__name__)


class DeliveryError(RuntimeError):
    """A receiver did not accept a notification; the delivery stays pending and is retried."""


@dataclass(frozen=True)
class Notification:
    """One alert transition to deliver to one receiver.

    ``repeat`` is True for a re-notification of a firing alert (it was delivered before);
    ``delivery_id`` is the ``alert_deliveries`` row, stable across retries.
    """

    alert: AlertEvent
    delivery_id: int
    repeat: bool
    sent_at: datetime
    generator_url: str


class Receiver(abc.ABC):
    """A destination of alert notifications, configured from settings.

    ``refresh_s``: when set, a firing alert is re-sent this often whatever the rule's ``renotify``
    and acknowledgements say (Alertmanager forgets alerts that are not re-posted).
    """

    name: str
    refresh_s: float | None = None

    def __init__(self, timeout_s: float) -> None:
        self._client = httpx.Client(timeout=timeout_s, follow_redirects=False)

    @abc.abstractmethod
    def send(self, notification: Notification) -> None:
        """Deliver one notification or raise :class:`DeliveryError`."""

    def close(self) -> None:
        """Release the HTTP connections."""
        self._client.close()

    def _post(self, url: str, content: bytes, headers: dict[str, str]) -> httpx.Response:
        """POST bytes; any transport error or non-2xx answer is a :class:`DeliveryError`."""
        try:
            response = self._client.post(url, content=content, headers={"content-type": "application/json", **headers})
        except httpx.HTTPError as exc:
            raise DeliveryError(f"{type(exc).__name__}: {exc}") from exc
        if not 200 <= response.status_code < 300:
            raise DeliveryError(f"HTTP {response.status_code}: {response.text[:300]}")
        return response


def fmt_value(value: float | None) -> str:
    """A number for people: 4 significant digits, ``-`` when missing.

    >>> fmt_value(1234.5678), fmt_value(None)
    ('1235', '-')
    """
    return "-" if value is None else f"{value:.4g}"
