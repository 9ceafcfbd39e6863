"""Generic webhook receiver: the alert as JSON, signed with HMAC-SHA256.

Scheme (see docs/alerts.md): the request carries ``X-Atalaia-Timestamp: <unix seconds>`` and
``X-Atalaia-Signature: sha256=<hex>``, where ``<hex>`` is the HMAC-SHA256, keyed with
``ATALAIA_WEBHOOK_SECRET``, of ``<timestamp>.`` followed by the raw request body. Signing the
timestamp with the body lets a receiver reject replays: :func:`verify_signature` refuses a
timestamp more than ``tolerance_s`` away from its clock. Copy that function into a receiver.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any

from monitors.routing.base import Notification, Receiver

SIGNATURE_HEADER = "X-Atalaia-Signature"
TIMESTAMP_HEADER = "X-Atalaia-Timestamp"
PAYLOAD_VERSION = 1


def sign(secret: str, body: bytes, timestamp: str) -> str:
    """The ``X-Atalaia-Signature`` value of ``body`` sent at ``timestamp``.

    >>> sign("s3cret", b'{"a":1}', "1700000000")
    'sha256=1698a50bc74d1ff1db85c4e0a5297c2ad9fdba245d5737cdb789e4cc6e098940'
    """
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify_signature(
    secret: str, body: bytes, header: str, timestamp_header: str, tolerance_s: float = 300.0, now: float | None = None
) -> bool:
    """Whether a webhook request is authentic and fresh (a receiver-side check).

    ``header`` is the ``X-Atalaia-Signature`` value, ``timestamp_header`` the
    ``X-Atalaia-Timestamp`` value, ``body`` the raw request body as received. The comparison
    takes constant time.

    >>> body, ts = b'{"a":1}', "1700000000"
    >>> verify_signature("s3cret", body, sign("s3cret", body, ts), ts, now=1700000010)
    True
    >>> verify_signature("wrong", body, sign("s3cret", body, ts), ts, now=1700000010)
    False
    >>> verify_signature("s3cret", body, sign("s3cret", body, ts), ts, now=1700001000)  # too old: a replay
    False
    """
    # Self-contained on purpose (only hashlib, hmac, time), so receivers can copy it.
    try:
        sent = int(timestamp_header)
    except (TypeError, ValueError):
        return False
    if abs((time.time() if now is None else now) - sent) > tolerance_s:
        return False
    signed = timestamp_header.encode() + b"." + body
    expected = "sha256=" + hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected.encode(), (header or "").strip().encode())


def webhook_payload(n: Notification, receiver: str = "webhook") -> dict[str, Any]:
    """The JSON body: the alert event, whether it is a repeat, and ids for idempotency."""
    return {
        "version": PAYLOAD_VERSION,
        "receiver": receiver,
        "kind": "repeat" if n.repeat else "transition",
        "delivery_id": n.delivery_id,
        "generator_url": n.generator_url,
        "alert": json.loads(n.alert.to_json()),
    }


class WebhookReceiver(Receiver):
    """POSTs signed JSON to ``url``."""

    name = "webhook"

    def __init__(self, url: str, secret: str, timeout_s: float) -> None:
        super().__init__(timeout_s)
        if not secret:
            raise ValueError(
                "ATALAIA_WEBHOOK_URL is set but ATALAIA_WEBHOOK_SECRET is empty: set a secret so receivers "
                "can verify the signature"
            )
        self.url, self._secret = url, secret

    def send(self, notification: Notification) -> None:
        """POST the payload with its timestamp and signature headers."""
        body = json.dumps(webhook_payload(notification, self.name), separators=(",", ":")).encode()
        timestamp = str(int(notification.sent_at.timestamp()))
        self._post(
            self.url,
            body,
            {
                TIMESTAMP_HEADER: timestamp,
                SIGNATURE_HEADER: sign(self._secret, body, timestamp),
                "X-Atalaia-Event-Id": str(notification.alert.event_id),
            },
        )
