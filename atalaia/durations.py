"""Durations and points in time as people type them: ``90``, ``90s``, ``30m``, ``2h``, ``7d``, ``1w``
or an ISO 8601 time.

One parser for every command and HTTP parameter that takes a look-back or a length of time
(dead-letter ``--since``, silences, the dashboard's range), so they all accept the same words.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
#: Seconds per unit; a bare number is seconds.
UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


def duration_seconds(text: str) -> float | None:
    """Seconds of a duration, or ``None`` when ``text`` is not one.

    >>> duration_seconds("2h"), duration_seconds("90"), duration_seconds(" 1.5 m "), duration_seconds("soon")
    (7200.0, 90.0, 90.0, None)
    """
    match = _DURATION.match(text)
    return float(match[1]) * UNIT_S[match[2]] if match else None


def parse_duration(text: str) -> float:
    """Seconds of a duration; ``ValueError`` naming the accepted forms otherwise.

    >>> parse_duration("1d")
    86400.0
    >>> parse_duration("soon")
    Traceback (most recent call last):
    ...
    ValueError: duration 'soon': use a number with s, m, h, d or w, e.g. 2h
    """
    seconds = duration_seconds(text)
    if seconds is None:
        raise ValueError(f"duration {text!r}: use a number with s, m, h, d or w, e.g. 2h")
    return seconds


def parse_time(text: str, now: datetime | None = None) -> datetime:
    """A point in time: a duration back from ``now`` or an ISO 8601 time (UTC when it has no offset;
    a trailing ``Z`` is UTC). ``ValueError`` for anything else.

    >>> now = datetime(2026, 1, 2, tzinfo=UTC)
    >>> parse_time("36h", now).isoformat(), parse_time("3600", now).isoformat()
    ('2025-12-31T12:00:00+00:00', '2026-01-01T23:00:00+00:00')
    >>> parse_time("2026-01-01T10:00:00+01:00").isoformat(), parse_time("2026-01-01T10:00:00Z").isoformat()
    ('2026-01-01T09:00:00+00:00', '2026-01-01T10:00:00+00:00')
    """
    seconds = duration_seconds(text)
    if seconds is not None:
        return (now or datetime.now(UTC)) - timedelta(seconds=seconds)
    when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).astimezone(UTC)
