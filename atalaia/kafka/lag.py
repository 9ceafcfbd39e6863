"""Consumer lag of a consumer group, read from outside the group.

How far a group is behind (end offsets less its committed offsets) and how long its oldest
waiting message has waited. The worker's and the monitor's health endpoints report their own
group's; the monitor's pipeline-health rules page on them. Reading never joins the group and
never commits: the probe asks the group's coordinator for committed offsets and reads the first
uncommitted message of a lagging partition with a consumer of its own assignment.

"Committed" is what the group has finished with: the worker commits a batch's offsets only after
its rows are written, so ``oldest_waiting_age_s`` of the worker's group is how long the oldest
event not yet stored has been waiting (the event's own ``ts``, else the record's timestamp).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from atalaia.kafka import clients
from atalaia.settings import Settings

log = logging.getLogger(__name__)

#: How long one measurement may spend reading the oldest waiting messages.
READ_WAITING_S = 3.0


@dataclass(frozen=True)
class GroupLag:
    """One measurement of a consumer group's lag."""

    group: str
    #: Messages past the group's committed offsets, summed over the partitions of its topics.
    lag: int
    #: Lag per "topic/partition".
    partitions: dict[str, int] = field(default_factory=dict)
    #: Seconds the oldest message not yet committed has waited (None: nothing waits, or unread).
    oldest_waiting_age_s: float | None = None
    #: When it was measured (epoch seconds).
    measured_at: float = field(default_factory=time.time)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (health endpoints)."""
        return {
            "group": self.group,
            "lag": self.lag,
            "partitions": self.partitions,
            "oldest_waiting_age_s": None if self.oldest_waiting_age_s is None else round(self.oldest_waiting_age_s, 3),
            "measured_at": self.measured_at,
        }


def _message_time(value: bytes | None, record_ms: int | None) -> float | None:
    """Epoch seconds of a message: the event's own ``ts`` (set where it was created, before any
    spool), else the record's timestamp."""
    try:
        ts = json.loads(value or b"").get("ts")
        if isinstance(ts, str):
            return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
    except (ValueError, AttributeError, TypeError):
        pass
    return record_ms / 1000.0 if record_ms is not None and record_ms >= 0 else None


class LagProbe:
    """Measures the lag of consumer group ``group`` on ``topics``.

    Two consumers of its own: one carries the group's id only to ask for its committed offsets
    (it never subscribes, so it never joins or rebalances the group, and never commits); the
    other, with no group, reads end offsets and the oldest waiting messages.
    """

    def __init__(self, settings: Settings, group: str, topics: list[str], client_id: str = "atalaia-lag-probe") -> None:
        self.settings = settings
        self.group = group
        self.topics = topics
        self.client_id = client_id
        self._offsets: Any = None
        self._reader: Any = None

    def _consumer(self, group_id: str | None) -> Any:
        return clients.consumer(
            self.settings,
            client_id=self.client_id,
            group_id=group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            bootstrap_timeout_ms=clients.BOOTSTRAP_TIMEOUT_MS,
            request_timeout_ms=10_000,
        )

    def measure(self) -> GroupLag:
        """Measure now; raises when the broker cannot be asked (the probe reconnects next time)."""
        from kafka import TopicPartition

        try:
            if self._reader is None:
                self._reader = self._consumer(None)
            if self._offsets is None:
                self._offsets = self._consumer(self.group)
            reader = self._reader
            tps = [
                TopicPartition(topic, p)
                for topic in self.topics
                for p in sorted(reader.partitions_for_topic(topic) or ())
            ]
            if not tps:
                return GroupLag(self.group, 0)
            ends = reader.end_offsets(tps)
            begins = reader.beginning_offsets(tps)
            positions: dict[Any, int] = {}
            for tp in tps:
                committed = self._offsets.committed(tp)
                # Never committed: the group starts from the earliest message (auto_offset_reset).
                start = committed if committed is not None and committed >= 0 else begins[tp]
                positions[tp] = max(start, begins[tp])
            lags = {tp: max(0, ends[tp] - positions[tp]) for tp in tps}
            oldest = self._oldest_waiting(reader, {tp: positions[tp] for tp, n in lags.items() if n > 0})
        except Exception:
            self.close()
            raise
        return GroupLag(
            self.group,
            sum(lags.values()),
            {f"{tp.topic}/{tp.partition}": n for tp, n in lags.items()},
            None if oldest is None else max(0.0, time.time() - oldest),
        )

    def _oldest_waiting(self, c: Any, waiting: dict[Any, int]) -> float | None:
        """Creation time (epoch s) of the oldest message at the committed offsets of ``waiting``."""
        if not waiting:
            return None
        c.assign(list(waiting))
        paused = c.paused()  # a partition paused by the last measurement stays paused when assigned again
        if paused:
            c.resume(*paused)
        for tp, position in waiting.items():
            c.seek(tp, position)
        times: list[float] = []
        left = set(waiting)
        deadline = time.monotonic() + READ_WAITING_S
        while left and time.monotonic() < deadline:
            for tp, records in c.poll(timeout_ms=500, max_records=len(waiting)).items():
                if tp in left and records:
                    left.discard(tp)
                    c.pause(tp)
                    when = _message_time(records[0].value, records[0].timestamp)
                    if when is not None:
                        times.append(when)
        return min(times) if times else None

    def close(self) -> None:
        """Close the probe's consumers (they are opened again on the next measurement)."""
        for c in (self._offsets, self._reader):
            if c is not None:
                try:
                    c.close(autocommit=False)
                except Exception:
                    log.debug("lag probe close failed", exc_info=True)
        self._offsets = self._reader = None


class ConsumerHealth:
    """What a consumer reports on its health and Prometheus endpoints: its group's lag and the
    age of its own last commit.

    The lag is sampled every ``every_s`` seconds on a thread of its own (the probe's calls
    block); the consumer calls :meth:`committed` after each commit of offsets. ``on_sample``, if
    given, gets each measurement (the monitor feeds its pipeline-health rules with it);
    ``last_commit``, if given, is a callable returning the epoch of the last commit instead.
    """

    def __init__(
        self,
        settings: Settings,
        group: str,
        topics: list[str],
        every_s: float,
        client_id: str = "atalaia-lag-probe",
        on_sample: Any = None,
        last_commit: Any = None,
    ) -> None:
        self.group = group
        self.every_s = every_s
        self.probe = LagProbe(settings, group, topics, client_id=client_id)
        self.on_sample = on_sample
        self.latest: GroupLag | None = None
        self.error: str | None = None
        self._last_commit: float | None = None
        # Or a callable giving the epoch of the last commit (the monitor's follow loop keeps it).
        self._last_commit_of = last_commit
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lag-{group}", daemon=True)

    def committed(self, at: float | None = None) -> None:
        """Record a commit of offsets (now, or at epoch ``at``)."""
        self._last_commit = time.time() if at is None else at

    def last_commit_age_s(self) -> float | None:
        """Seconds since this consumer last committed (None: not since it started)."""
        last = self._last_commit_of() if self._last_commit_of is not None else self._last_commit
        return None if last is None else max(0.0, time.time() - last)

    def sample(self) -> GroupLag | None:
        """Measure once; a failure is kept in ``error`` (and logged once), not raised."""
        try:
            lag = self.probe.measure()
        except Exception as exc:  # noqa: BLE001 - the broker may be away: report it, try again later
            if self.error is None:
                log.warning("consumer lag not measured", extra={"group": self.group, "error": f"{exc}"})
            self.error = f"{type(exc).__name__}: {exc}"[:300]
            return None
        self.latest, self.error = lag, None
        if self.on_sample is not None:
            self.on_sample(lag)
        return lag

    def start(self) -> ConsumerHealth:
        """Sample on a background thread until :meth:`stop` (a second call does nothing)."""
        if self._thread.ident is None:
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop sampling and close the probe."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(READ_WAITING_S + 15)
        self.probe.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.every_s)

    def as_dict(self) -> dict[str, Any]:
        """The ``consumer`` block of a health answer."""
        latest = self.latest
        age = self.last_commit_age_s()
        return {
            "group": self.group,
            "lag": None if latest is None else latest.lag,
            "oldest_waiting_age_s": None
            if latest is None or latest.oldest_waiting_age_s is None
            else round(latest.oldest_waiting_age_s, 3),
            "lag_measured_age_s": None if latest is None else round(max(0.0, time.time() - latest.measured_at), 3),
            "last_commit_age_s": None if age is None else round(age, 3),
            "error": self.error,
        }

    def prometheus(self) -> str:
        """Prometheus text exposition of the same figures."""
        return prometheus_text([self])


def prometheus_text(healths: list[ConsumerHealth]) -> str:
    """Prometheus text of several consumers' figures, one ``group`` label each (absent values left out)."""
    rows = [(h.group, h.as_dict()) for h in healths]
    lines: list[str] = []
    for name, help_text, pick in (
        ("atalaia_consumer_lag", "Messages past the consumer group's committed offsets", lambda d: d["lag"]),
        (
            "atalaia_consumer_oldest_waiting_age_seconds",
            "Age of the oldest message the group has not committed (0: none waiting)",
            lambda d: 0.0 if d["lag"] == 0 else d["oldest_waiting_age_s"],
        ),
        (
            "atalaia_consumer_last_commit_age_seconds",
            "Seconds since this consumer last committed",
            lambda d: d["last_commit_age_s"],
        ),
        (
            "atalaia_consumer_lag_probe_ok",
            "1 while the group's lag could be measured",
            lambda d: 0 if d["error"] else 1,
        ),
    ):
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
        for group, d in rows:
            value = pick(d)
            if value is not None:
                label = group.replace("\\", "\\\\").replace('"', '\\"')
                lines.append(f'{name}{{group="{label}"}} {float(value)}')
    return "\n".join(lines) + "\n"
