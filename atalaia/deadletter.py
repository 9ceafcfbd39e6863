"""Building dead-letter records for messages that cannot be processed."""

from __future__ import annotations

import base64

from atalaia.events import DeadLetterEvent


def dead_letter_for(
    raw: bytes | None,
    reason: str,
    source_topic: str,
    partition: int | None = None,
    offset: int | None = None,
    field: str | None = None,
    consumer: str | None = None,
) -> DeadLetterEvent:
    """A dead-letter event carrying the original bytes (text when UTF-8, else base64).

    >>> dl = dead_letter_for(b"\\xff\\x00", "not UTF-8", "atalaia.inference", 0, 7)
    >>> dl.original_encoding, dl.original
    ('base64', '/wA=')
    """
    raw = raw or b""
    try:
        original, encoding = raw.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        original, encoding = base64.b64encode(raw).decode("ascii"), "base64"
    return DeadLetterEvent(
        reason=reason,
        field=field,
        source_topic=source_topic,
        source_partition=partition,
        source_offset=offset,
        original=original,
        original_encoding=encoding,  # type: ignore[arg-type]
        consumer=consumer,
    )


def original_bytes(event: DeadLetterEvent) -> bytes:
    """The original message bytes of a dead-letter record."""
    if event.original_encoding == "base64":
        return base64.b64decode(event.original)
    return event.original.encode("utf-8")
