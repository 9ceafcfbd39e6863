"""Signatures of model lifecycle events (``deploy``/``rollback`` on ``<namespace>.models``).

Whoever can write to the models topic could otherwise make every inference instance load a
folder of their choosing. With ``ATALAIA_MODEL_EVENTS_SECRET`` set, publishers sign each event
with HMAC-SHA256 over its identifying fields, and inference applies only events whose signature
verifies, whose ``ts`` is within ``ATALAIA_MODEL_EVENTS_MAX_AGE_S`` of its clock, and whose
``event_id`` it has not seen (``inference/authority.py``).
"""

from __future__ import annotations

import hashlib
import hmac

from atalaia.events import ModelEvent
from atalaia.settings import Settings

#: Prefix of the signature value: the scheme, so that it can change without ambiguity.
SCHEME = "v1="


def signing_payload(event: ModelEvent) -> bytes:
    """The bytes signed: every field that says what to do, when, and which event this is.

    >>> import uuid, datetime
    >>> e = ModelEvent(event_id=uuid.UUID(int=1), ts=datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC),
    ...                type="deploy", model_version="m@2", artefact_path="/m/2")
    >>> signing_payload(e)
    b'atalaia-model-event\\n00000000-0000-0000-0000-000000000001\\n2026-01-01T00:00:00+00:00\\ndeploy\\nm@2\\n/m/2\\n\\n'
    """
    fields: tuple[str, ...] = (
        "atalaia-model-event",
        str(event.event_id),
        event.ts.isoformat(),
        event.type,
        event.model_version,
        event.artefact_path or "",
        event.previous_version or "",
        event.reason or "",
    )
    if event.type == "canary":  # appended, so deploy/rollback signatures are unchanged
        fields = (*fields, f"{event.canary_share}", event.canary_mode or "")
    return "\n".join(fields).encode("utf-8")


def signature_of(event: ModelEvent, secret: str) -> str:
    """``v1=<hex HMAC-SHA256>`` of :func:`signing_payload` with ``secret``."""
    return SCHEME + hmac.new(secret.encode("utf-8"), signing_payload(event), hashlib.sha256).hexdigest()


def sign(event: ModelEvent, settings: Settings) -> ModelEvent:
    """``event`` with its signature when ``ATALAIA_MODEL_EVENTS_SECRET`` is set, else unchanged.

    >>> from pydantic import SecretStr
    >>> e = ModelEvent(type="rollback", model_version="m@1")
    >>> sign(e, Settings()).signature is None
    True
    >>> signed = sign(e, Settings(model_events_secret=SecretStr("k")))
    >>> verify(signed, "k"), verify(signed, "other")
    (True, False)
    """
    secret = settings.model_events_secret.get_secret_value()
    if not secret:
        return event
    return event.model_copy(update={"signature": signature_of(event, secret)})


def verify(event: ModelEvent, secret: str) -> bool:
    """Whether ``event`` carries a valid signature for ``secret`` (constant-time comparison)."""
    if not event.signature:
        return False
    return hmac.compare_digest(event.signature, signature_of(event, secret))
