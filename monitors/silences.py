"""Silences: label matchers that mute alert notifications for a while.

A silence mutes *deliveries* only: rules are still evaluated, transitions are still stored in
``alerts`` and published on ``atalaia.alerts``; receivers just hear nothing about an alert whose
labels match every matcher of an active silence (``starts_at <= now < ends_at``, not expired).
Matchers are exact: ``{"rule": "latency_p95_high", "model_version": "v1"}`` matches alerts of
that rule on that model version. The names an alert can be matched on are its labels plus
``rule`` (also ``alertname``) and ``severity``.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import Connection, Engine, select, update

from atalaia import durations
from atalaia.events import utcnow
from atalaia.storage import tables as t
from atalaia.storage.repository import as_utc

LABEL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: Longest silence accepted: a forgotten silence must not mute an alert for ever.
MAX_DURATION = timedelta(days=366)


class SilenceError(ValueError):
    """A silence request is invalid, or names a silence that does not exist."""


@dataclass(frozen=True)
class Silence:
    """One row of ``silences``."""

    silence_id: str
    matchers: dict[str, str]
    created_by: str
    comment: str
    starts_at: datetime
    ends_at: datetime
    created_at: datetime
    expired_at: datetime | None = None

    def state(self, now: datetime) -> Literal["pending", "active", "expired"]:
        """``pending`` before it starts, ``active`` while it mutes, ``expired`` after its end or expiry.

        >>> from datetime import UTC
        >>> t0 = datetime(2026, 1, 1, tzinfo=UTC)
        >>> s = Silence("id", {"rule": "r"}, "me", "", t0, t0 + timedelta(hours=1), t0)
        >>> s.state(t0 - timedelta(seconds=1)), s.state(t0), s.state(t0 + timedelta(hours=1))
        ('pending', 'active', 'expired')
        """
        if self.expired_at is not None or now >= self.ends_at:
            return "expired"
        return "active" if now >= self.starts_at else "pending"

    def matches(self, rule: str, labels: Mapping[str, str], severity: str | None = None) -> bool:
        """Whether every matcher equals the alert's value (see :func:`alert_match_set`).

        >>> from datetime import UTC
        >>> t0 = datetime(2026, 1, 1, tzinfo=UTC)
        >>> s = Silence("id", {"rule": "slow", "model_version": "v1"}, "me", "", t0, t0, t0)
        >>> s.matches("slow", {"model_version": "v1"}), s.matches("slow", {"model_version": "v2"})
        (True, False)
        """
        values = alert_match_set(rule, labels, severity)
        return all(values.get(name) == value for name, value in self.matchers.items())

    def to_dict(self, now: datetime | None = None) -> dict[str, Any]:
        """JSON-ready form, with the state at ``now``."""
        return {
            "silence_id": self.silence_id,
            "matchers": dict(self.matchers),
            "created_by": self.created_by,
            "comment": self.comment,
            "starts_at": self.starts_at.isoformat(),
            "ends_at": self.ends_at.isoformat(),
            "created_at": self.created_at.isoformat(),
            "expired_at": self.expired_at.isoformat() if self.expired_at else None,
            "state": self.state(now or utcnow()),
        }


def parse_duration(text: str) -> float:
    """Seconds of a duration: ``90``, ``90s``, ``30m``, ``2h``, ``1d``, ``1w``.

    >>> parse_duration("2h"), parse_duration("90")
    (7200.0, 90.0)
    >>> parse_duration("soon")
    Traceback (most recent call last):
    ...
    monitors.silences.SilenceError: duration 'soon': use a number with s, m, h, d or w, e.g. 2h
    """
    try:
        return durations.parse_duration(text)
    except ValueError as exc:
        raise SilenceError(str(exc)) from None


def alert_match_set(rule: str, labels: Mapping[str, str], severity: str | None = None) -> dict[str, str]:
    """The names a silence can match on: the alert's labels, ``rule``, ``alertname`` and ``severity``."""
    values = dict(labels)
    values["rule"] = values["alertname"] = rule
    if severity is not None:
        values["severity"] = severity
    return values


def parse_matchers(items: Iterable[str]) -> dict[str, str]:
    """``["rule=slow", "model_version=v1"]`` → ``{"rule": "slow", "model_version": "v1"}``.

    >>> parse_matchers(["rule=slow", "model_version=smollm2@base"])
    {'rule': 'slow', 'model_version': 'smollm2@base'}
    >>> parse_matchers(["slow"])
    Traceback (most recent call last):
    ...
    monitors.silences.SilenceError: matcher 'slow': expected NAME=VALUE, e.g. rule=latency_p95_high
    """
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise SilenceError(f"matcher {item!r}: expected NAME=VALUE, e.g. rule=latency_p95_high")
        out[name.strip()] = value.strip()
    return check_matchers(out)


def check_matchers(matchers: Mapping[str, Any]) -> dict[str, str]:
    """Validate matchers: at least one, label-like names, non-empty string values."""
    if not matchers:
        raise SilenceError("a silence needs at least one matcher (e.g. rule=NAME); it would mute every alert")
    out: dict[str, str] = {}
    for name, value in matchers.items():
        if not isinstance(name, str) or not LABEL_NAME.match(name):
            raise SilenceError(f"matcher name {name!r}: use letters, digits and '_' (not starting with a digit)")
        if not isinstance(value, str) or not value:
            raise SilenceError(f"matcher {name!r}: the value must be a non-empty string")
        out[name] = value
    return out


def _from_row(row: Any) -> Silence:
    return Silence(
        silence_id=row["silence_id"],
        matchers=dict(row["matchers"]),
        created_by=row["created_by"],
        comment=row["comment"],
        starts_at=as_utc(row["starts_at"]),
        ends_at=as_utc(row["ends_at"]),
        created_at=as_utc(row["created_at"]),
        expired_at=as_utc(row["expired_at"]) if row["expired_at"] is not None else None,
    )


def create_silence(
    engine: Engine,
    matchers: Mapping[str, Any],
    *,
    created_by: str,
    comment: str = "",
    duration_s: float | None = None,
    ends_at: datetime | None = None,
    starts_at: datetime | None = None,
    now: datetime | None = None,
) -> Silence:
    """Store a silence from ``starts_at`` (default now) to ``ends_at`` or for ``duration_s``; return it."""
    now = now or utcnow()
    start = as_utc(starts_at) if starts_at else now
    if (duration_s is None) == (ends_at is None):
        raise SilenceError("give exactly one of a duration or an end time")
    if duration_s is not None:
        if duration_s <= 0:
            raise SilenceError(f"duration must be positive, got {duration_s:g} s")
        end = start + timedelta(seconds=duration_s)
    else:
        assert ends_at is not None
        end = as_utc(ends_at)
    if end <= start:
        raise SilenceError(f"the silence ends ({end.isoformat()}) before it starts ({start.isoformat()})")
    if end <= now:
        raise SilenceError(f"the silence would already be over ({end.isoformat()} is in the past)")
    if end - start > MAX_DURATION:
        raise SilenceError(f"a silence lasts at most {MAX_DURATION.days} days")
    if not created_by.strip():
        raise SilenceError("say who creates the silence (created_by)")
    silence = Silence(
        silence_id=str(uuid.uuid4()),
        matchers=check_matchers(matchers),
        created_by=created_by.strip(),
        comment=comment,
        starts_at=start,
        ends_at=end,
        created_at=now,
    )
    with engine.begin() as conn:
        conn.execute(
            t.silences.insert().values(
                silence_id=silence.silence_id,
                matchers=silence.matchers,
                created_by=silence.created_by,
                comment=silence.comment,
                starts_at=silence.starts_at,
                ends_at=silence.ends_at,
                created_at=silence.created_at,
                expired_at=None,
            )
        )
    return silence


def get_silence(engine: Engine, silence_id: str) -> Silence:
    """One silence by id; :class:`SilenceError` if there is none."""
    with engine.connect() as conn:
        row = conn.execute(select(t.silences).where(t.silences.c.silence_id == silence_id)).mappings().first()
    if row is None:
        raise SilenceError(f"no silence with id {silence_id!r}")
    return _from_row(row)


def expire_silence(engine: Engine, silence_id: str, now: datetime | None = None) -> Silence:
    """End a silence now (idempotent: an expired silence is returned as it is)."""
    now = now or utcnow()
    with engine.begin() as conn:
        conn.execute(
            update(t.silences)
            .where(t.silences.c.silence_id == silence_id, t.silences.c.expired_at.is_(None))
            .values(expired_at=now)
        )
    return get_silence(engine, silence_id)


def list_silences(engine: Engine, include_expired: bool = False, now: datetime | None = None) -> list[Silence]:
    """Silences, newest first: pending and active ones, or all of them with ``include_expired``."""
    now = now or utcnow()
    query = select(t.silences).order_by(t.silences.c.created_at.desc())
    if not include_expired:
        query = query.where(t.silences.c.expired_at.is_(None), t.silences.c.ends_at > now)
    with engine.connect() as conn:
        return [_from_row(r) for r in conn.execute(query).mappings()]


def active_silences(conn: Connection, now: datetime) -> list[Silence]:
    """Silences muting at ``now``, read in the caller's connection (so in its transaction)."""
    query = select(t.silences).where(
        t.silences.c.expired_at.is_(None), t.silences.c.starts_at <= now, t.silences.c.ends_at > now
    )
    return [_from_row(r) for r in conn.execute(query).mappings()]


def matching_silence(
    silences: Iterable[Silence], rule: str, labels: Mapping[str, str], severity: str | None = None
) -> Silence | None:
    """The first silence that matches the alert, or None."""
    for silence in silences:
        if silence.matches(rule, labels, severity):
            return silence
    return None
