"""Durable alert delivery: one ``alert_deliveries`` row per (alert transition, receiver).

- :func:`enqueue` inserts pending rows in the transaction that stores the transition, so a
  transition is never stored without its deliveries (or the reverse). ``pending`` transitions
  are not delivered; a ``firing`` one goes to every receiver unless a silence matches it; a
  ``resolved`` one goes to the receivers that were told the alert fired (and is muted by a
  silence too).
- :class:`DeliveryWorker` is a thread that sends due rows, oldest first, and never blocks the
  evaluation loop. A failure leaves the row pending with ``next_attempt_at`` pushed back
  exponentially (``ATALAIA_ALERT_RETRY_INITIAL_S`` doubling up to ``ATALAIA_ALERT_RETRY_MAX_S``),
  for ever: the rows survive a restart of the monitor. Transitions of one alert reach a receiver
  in order (a resolution waits for its firing notification).
- The same thread re-notifies: a firing, unresolved alert whose delivery to a receiver succeeded
  longer ago than the rule's ``renotify`` (default ``ATALAIA_ALERT_RENOTIFY_S``) is set pending
  again, so re-notifications are never more frequent than that interval, even after an outage.
  Acknowledged alerts are not re-notified. Alertmanager has its own refresh interval instead
  (see :mod:`monitors.routing.alertmanager`). A firing alert that a silence kept from a receiver
  is delivered once the silence ends.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, and_, exists, func, select, update
from sqlalchemy.orm import aliased

from atalaia.events import AlertEvent, utcnow
from atalaia.settings import Settings
from atalaia.storage import repository
from atalaia.storage import tables as t
from atalaia.storage.repository import as_utc
from monitors.routing.alertmanager import AlertmanagerReceiver
from monitors.routing.base import DeliveryError, Notification, Receiver
from monitors.routing.slack import SlackReceiver
from monitors.routing.webhook import WebhookReceiver
from monitors.rules import Rule
from monitors.silences import active_silences, matching_silence

log = logging.getLogger(__name__)

PENDING, DELIVERED = "pending", "delivered"
POLL_S = 1.0
REQUEUE_EVERY_S = 5.0
BATCH = 200


def backoff_s(attempts: int, initial_s: float, max_s: float) -> float:
    """Delay before the next attempt after ``attempts`` failed ones: doubling, capped.

    >>> [backoff_s(n, 1.0, 30.0) for n in (1, 2, 3, 6, 50)]
    [1.0, 2.0, 4.0, 30.0, 30.0]
    """
    return min(initial_s * 2.0 ** min(attempts - 1, 60), max_s)


def receivers_from_settings(settings: Settings) -> list[Receiver]:
    """The receivers whose URL is set (Alertmanager, webhook, Slack); raises ``ValueError`` on a bad combination."""
    timeout = settings.alert_delivery_timeout_s
    out: list[Receiver] = []
    if settings.alertmanager_url:
        out.append(AlertmanagerReceiver(settings.alertmanager_url, settings.alertmanager_resend_s, timeout))
    if settings.webhook_url:
        out.append(WebhookReceiver(settings.webhook_url, settings.webhook_secret, timeout))
    if settings.slack_webhook_url:
        out.append(SlackReceiver(settings.slack_webhook_url, timeout))
    return out


def generator_url(settings: Settings, alert_id: str) -> str:
    """Link to an alert in the monitor's API, for notifications."""
    host = settings.monitor_host if settings.monitor_host not in ("", "0.0.0.0", "::") else "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.monitor_port}/api/alerts/{alert_id}"


def alert_from_row(row: Mapping[str, Any]) -> AlertEvent:
    """The :class:`AlertEvent` stored as one ``alerts`` row."""
    return AlertEvent(
        event_id=row["event_id"],
        ts=as_utc(row["ts"]),
        alert_id=row["alert_id"],
        fingerprint=row["fingerprint"],
        rule=row["rule"],
        state=row["state"],
        severity=row["severity"],
        labels=row["labels"],
        annotations=row["annotations"],
        value=row["value"],
        threshold=row["threshold"],
        action=row["action"],
        started_at=as_utc(row["started_at"]),
    )


def _told_firing(conn: Connection, alert_id: str) -> set[str]:
    """Receivers that have a delivery of this alert's firing transition."""
    d, a = t.alert_deliveries, t.alerts
    query = (
        select(d.c.receiver)
        .join(a, a.c.event_id == d.c.alert_event_id)
        .where(a.c.alert_id == alert_id, a.c.state == "firing")
    )
    return {str(r) for (r,) in conn.execute(query)}


def enqueue(conn: Connection, alert: AlertEvent, receivers: Iterable[str], now: datetime | None = None) -> list[str]:
    """Queue deliveries of a stored transition in the caller's transaction; return the receivers queued."""
    names = list(receivers)
    if not names or alert.state == "pending":
        return []
    now = now or utcnow()
    silence = matching_silence(active_silences(conn, now), alert.rule, alert.labels, alert.severity)
    if silence is not None:
        log.info(
            "alert silenced",
            extra={"rule": alert.rule, "state": alert.state, "silence_id": silence.silence_id, "labels": alert.labels},
        )
        return []
    if alert.state == "resolved":
        told = _told_firing(conn, str(alert.alert_id))
        names = [n for n in names if n in told]
    rows = [
        {
            "alert_event_id": str(alert.event_id),
            "receiver": name,
            "status": PENDING,
            "attempts": 0,
            "next_attempt_at": now,
            "last_error": None,
            "created_at": now,
            "delivered_at": None,
        }
        for name in names
    ]
    repository.insert_ignoring_duplicates(conn, t.alert_deliveries, rows)
    return names


@dataclass
class RoundResult:
    """What one delivery round did."""

    delivered: int = 0
    failed: int = 0
    requeued: int = 0


class DeliveryWorker:
    """Sends pending deliveries in a background thread; see the module docstring for the rules.

    ``rules`` gives each rule's ``renotify``; alerts of rules not in it are not re-notified.
    ``clock`` is the time source (tests pass a fake one).
    """

    def __init__(
        self,
        engine: Engine,
        receivers: Sequence[Receiver],
        settings: Settings,
        rules: Mapping[str, Rule] | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.engine = engine
        self.receivers = {r.name: r for r in receivers}
        self.settings = settings
        self.rules = dict(rules or {})
        self.clock = clock
        self._blocked_until: dict[str, datetime] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_requeue: datetime | None = None

    # -- thread ----------------------------------------------------------------------------------
    def start(self) -> DeliveryWorker:
        """Start the background thread."""
        self._thread = threading.Thread(target=self._loop, name="alert-delivery", daemon=True)
        self._thread.start()
        log.info("alert delivery started", extra={"receivers": sorted(self.receivers)})
        return self

    def wake(self) -> None:
        """Send what is due now instead of at the next poll (called after a transition is stored)."""
        self._wake.set()

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the thread after its current send and close the HTTP clients."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        for receiver in self.receivers.values():
            receiver.close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                now = self.clock()
                if self._last_requeue is None or (now - self._last_requeue).total_seconds() >= REQUEUE_EVERY_S:
                    self.requeue(now)
                    self._last_requeue = now
                self.run_once()
                wait = self._seconds_to_next_due(self.clock())
            except Exception as exc:  # noqa: BLE001 - a database outage must not kill the thread
                log.warning("alert delivery round failed", extra={"error": f"{type(exc).__name__}: {exc}"})
                wait = POLL_S
            self._wake.wait(wait)
            self._wake.clear()

    def _seconds_to_next_due(self, now: datetime) -> float:
        """Sleep until the next row is due (so short backoff delays are kept), at most ``POLL_S``."""
        d = t.alert_deliveries
        ready = [n for n in self.receivers if self._blocked_until.get(n, now) <= now]
        wakeups = [b for n, b in self._blocked_until.items() if n in self.receivers and b > now]
        if ready:
            with self.engine.connect() as conn:
                nxt = conn.execute(
                    select(func.min(d.c.next_attempt_at)).where(d.c.status == PENDING, d.c.receiver.in_(ready))
                ).scalar()
            if nxt is not None:
                wakeups.append(as_utc(nxt))
        if not wakeups:
            return POLL_S
        return min(max((min(wakeups) - now).total_seconds(), 0.02), POLL_S)

    # -- sending ---------------------------------------------------------------------------------
    def _due(self, now: datetime) -> list[dict[str, Any]]:
        # Only receivers that are configured and not backing off: rows of the others would fill the batch.
        ready = [name for name in self.receivers if self._blocked_until.get(name, now) <= now]
        if not ready:
            return []
        d, a = t.alert_deliveries, t.alerts
        d2, a2 = aliased(d), aliased(a)
        earlier_pending = exists().where(
            d2.c.receiver == d.c.receiver,
            d2.c.status == PENDING,
            d2.c.id < d.c.id,
            a2.c.event_id == d2.c.alert_event_id,
            a2.c.alert_id == a.c.alert_id,
        )
        query = (
            select(
                d.c.id,
                d.c.receiver,
                d.c.attempts,
                d.c.delivered_at.label("previously_delivered_at"),
                *[c for c in a.c],
            )
            .join(a, a.c.event_id == d.c.alert_event_id)
            .where(d.c.status == PENDING, d.c.next_attempt_at <= now, d.c.receiver.in_(ready), ~earlier_pending)
            .order_by(d.c.id)
            .limit(BATCH)
        )
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    def run_once(self, now: datetime | None = None) -> RoundResult:
        """Attempt every due delivery once (a receiver that fails is skipped until its backoff ends)."""
        now = now or self.clock()
        result = RoundResult()
        failed_now: set[str] = set()
        for row in self._due(now):
            name = row["receiver"]
            receiver = self.receivers.get(name)
            if receiver is None or name in failed_now:
                continue
            sent_at = self.clock()
            notification = Notification(
                alert=alert_from_row(row),
                delivery_id=row["id"],
                repeat=row["previously_delivered_at"] is not None,
                sent_at=sent_at,
                generator_url=generator_url(self.settings, row["alert_id"]),
            )
            attempts = row["attempts"] + 1
            try:
                receiver.send(notification)
            except DeliveryError as exc:
                delay = backoff_s(attempts, self.settings.alert_retry_initial_s, self.settings.alert_retry_max_s)
                retry_at = sent_at + timedelta(seconds=delay)
                self._mark(row["id"], attempts=attempts, next_attempt_at=retry_at, last_error=str(exc)[:1000])
                self._blocked_until[name] = retry_at
                failed_now.add(name)
                result.failed += 1
                log.warning(
                    "alert delivery failed",
                    extra={
                        "receiver": name,
                        "rule": row["rule"],
                        "attempts": attempts,
                        "retry_in_s": delay,
                        "error": str(exc)[:300],
                    },
                )
                continue
            self._blocked_until.pop(name, None)
            self._mark(row["id"], attempts=attempts, status=DELIVERED, delivered_at=self.clock(), last_error=None)
            result.delivered += 1
            log.info(
                "alert delivered",
                extra={
                    "receiver": name,
                    "rule": row["rule"],
                    "state": row["state"],
                    "attempts": attempts,
                    "repeat": notification.repeat,
                },
            )
        return result

    def _mark(self, delivery_id: int, **values: Any) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(t.alert_deliveries).where(t.alert_deliveries.c.id == delivery_id).values(**values))

    # -- re-notification -------------------------------------------------------------------------
    def _interval(self, receiver: Receiver, rule: Rule, acked: bool) -> float | None:
        if receiver.refresh_s is not None:
            return receiver.refresh_s
        if acked:
            return None
        interval = rule.renotify_s if rule.renotify_s is not None else self.settings.alert_renotify_s
        return interval or None  # 0: never

    def requeue(self, now: datetime | None = None) -> int:
        """Re-queue re-notifications that are due, and firing alerts a silence no longer mutes."""
        now = now or self.clock()
        if not self.receivers:
            return 0
        a, r, d = t.alerts, aliased(t.alerts), t.alert_deliveries
        unresolved = ~exists().where(r.c.alert_id == a.c.alert_id, r.c.state == "resolved")
        changed = 0
        with self.engine.begin() as conn:
            firing = [dict(x) for x in conn.execute(select(a).where(a.c.state == "firing", unresolved)).mappings()]
            firing = [f for f in firing if f["rule"] in self.rules]
            if not firing:
                return 0
            event_ids = [f["event_id"] for f in firing]
            deliveries: dict[tuple[str, str], dict[str, Any]] = {
                (x["alert_event_id"], x["receiver"]): dict(x)
                for x in conn.execute(select(d).where(d.c.alert_event_id.in_(event_ids))).mappings()
            }
            acked = {
                x
                for (x,) in conn.execute(
                    select(t.alert_acks.c.alert_id).where(t.alert_acks.c.alert_id.in_([f["alert_id"] for f in firing]))
                )
            }
            silences = active_silences(conn, now)
            new_rows: list[dict[str, Any]] = []
            for alert in firing:
                if matching_silence(silences, alert["rule"], alert["labels"], alert["severity"]) is not None:
                    continue
                rule = self.rules[alert["rule"]]
                for name, receiver in self.receivers.items():
                    row = deliveries.get((alert["event_id"], name))
                    if row is None:
                        new_rows.append(
                            {
                                "alert_event_id": alert["event_id"],
                                "receiver": name,
                                "status": PENDING,
                                "attempts": 0,
                                "next_attempt_at": now,
                                "last_error": None,
                                "created_at": now,
                                "delivered_at": None,
                            }
                        )
                        continue
                    interval = self._interval(receiver, rule, alert["alert_id"] in acked)
                    if row["status"] != DELIVERED or interval is None or row["delivered_at"] is None:
                        continue
                    if (now - as_utc(row["delivered_at"])).total_seconds() >= interval:
                        conn.execute(
                            update(d)
                            .where(and_(d.c.id == row["id"], d.c.status == DELIVERED))
                            .values(status=PENDING, attempts=0, next_attempt_at=now, last_error=None)
                        )
                        changed += 1
            changed += repository.insert_ignoring_duplicates(conn, d, new_rows)
        if changed:
            self.wake()
        return changed
