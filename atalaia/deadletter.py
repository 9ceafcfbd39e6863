"""Dead-letter records: building them for messages that cannot be processed, listing them, and
replaying their original bytes once the cause is fixed (``atalaia deadletter list|replay``)."""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from atalaia.durations import parse_time
from atalaia.events import DeadLetterEvent, EventError, parse_event
from atalaia.settings import Settings
from atalaia.topics import topic_specs

log = logging.getLogger(__name__)


def dead_letter_for(
    raw: bytes | None,
    reason: str,
    source_topic: str,
    partition: int | None = None,
    offset: int | None = None,
    field: str | None = None,
    consumer: str | None = None,
) -> DeadLetterEvent:
    """A dead-letter event carrying the original bytes (text when UTF-8 without NUL, else base64).

    >>> dl = dead_letter_for(b"\\xff\\x00", "not UTF-8", "atalaia.inference", 0, 7)
    >>> dl.original_encoding, dl.original
    ('base64', '/wA=')
    >>> dead_letter_for(b'{"a": "x\\u0000"}', "NUL", "t").original_encoding  # an escape is text
    'utf-8'
    """
    raw = raw or b""
    try:
        original, encoding = raw.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        original, encoding = base64.b64encode(raw).decode("ascii"), "base64"
    if "\x00" in original:  # valid UTF-8, but events refuse NUL (no text column stores it)
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


# -- inspection and replay (``atalaia deadletter list|replay``) ----------------------------------
#
# Replay bookkeeping lives in Kafka itself, in the committed offsets of a consumer group on the
# dead-letter topic (``<namespace>.deadletter-replay`` by default): per partition, the committed
# offset is a watermark below which every record has been replayed, and the offset's metadata
# string lists the replayed offsets above it as ranges. A filtered replay therefore leaves the
# records it skipped replayable later, and a second replay never publishes a record twice.

#: Headers added to a replayed message, so its origin can be traced on the source topic.
REPLAY_HEADER = "atalaia-replay-of"
#: Kafka refuses offset metadata above ``offset.metadata.max.bytes`` (4096 by default).
MAX_STATE_CHARS = 3_000


def replay_group(settings: Settings) -> str:
    """The default consumer group that records replays on the dead-letter topic.

    >>> from atalaia.settings import Settings
    >>> replay_group(Settings(topic_namespace="prod"))
    'prod.deadletter-replay'
    """
    return f"{settings.topic_namespace}.deadletter-replay"


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """A point in time from a duration back from now (``90s``, ``30m``, ``2h``, ``7d``, ``1w``)
    or an ISO 8601 timestamp (UTC when it has no offset).

    >>> now = datetime(2026, 1, 2, tzinfo=UTC)
    >>> parse_since("36h", now).isoformat()
    '2025-12-31T12:00:00+00:00'
    >>> parse_since("2026-01-01T10:00:00+01:00").isoformat()
    '2026-01-01T09:00:00+00:00'
    >>> parse_since("yesterday")
    Traceback (most recent call last):
    ...
    ValueError: --since wants a duration like 30m, 2h or 7d, or an ISO 8601 time; got 'yesterday'
    """
    try:
        return parse_time(text, now)
    except ValueError:
        raise ValueError(f"--since wants a duration like 30m, 2h or 7d, or an ISO 8601 time; got {text!r}") from None


@dataclass(frozen=True)
class DeadLetterFilter:
    """Which dead-letter records a command applies to; every given criterion must hold.

    ``reason`` is a case-insensitive substring of the reason; ``source_topic`` is a full topic
    name; ``since`` compares with the record's ``ts`` (when it was dead-lettered).
    """

    since: datetime | None = None
    reason: str | None = None
    source_topic: str | None = None

    def matches(self, event: DeadLetterEvent) -> bool:
        """Whether ``event`` passes the filter.

        >>> dl = dead_letter_for(b"x", "message is not valid JSON", "atalaia.inference")
        >>> DeadLetterFilter(reason="JSON", source_topic="atalaia.inference").matches(dl)
        True
        >>> DeadLetterFilter(source_topic="atalaia.feedback").matches(dl)
        False
        """
        if self.since is not None and event.ts < self.since:
            return False
        if self.reason and self.reason.lower() not in event.reason.lower():
            return False
        return not (self.source_topic and event.source_topic != self.source_topic)


@dataclass
class ReplayState:
    """What has been replayed in one partition of the dead-letter topic.

    ``watermark``: every offset below it has been replayed (or was never there). ``done``: sorted,
    disjoint, inclusive ranges of replayed offsets above the watermark. Stored as the committed
    offset of the replay group and that offset's metadata.

    >>> s = ReplayState()
    >>> for o in (0, 1, 5, 6, 9):
    ...     s.mark(o)
    >>> s.watermark, s.done, s.encode()
    (2, [(5, 6), (9, 9)], '5-6,9')
    >>> ReplayState.decode(2, "5-6,9") == s, s.is_done(1), s.is_done(4), s.is_done(9)
    (True, True, False, True)
    """

    watermark: int = 0
    done: list[tuple[int, int]] = field(default_factory=list)

    def is_done(self, offset: int) -> bool:
        """Whether the record at ``offset`` was replayed already."""
        return offset < self.watermark or any(a <= offset <= b for a, b in self.done)

    def mark(self, offset: int) -> None:
        """Record ``offset`` as replayed (merging ranges, advancing the watermark)."""
        if not self.is_done(offset):
            self._normalise([*self.done, (offset, offset)])

    def _normalise(self, ranges: Iterable[tuple[int, int]]) -> None:
        merged: list[tuple[int, int]] = []
        for lo, hi in sorted(ranges):
            if merged and lo <= merged[-1][1] + 1:
                merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
            else:
                merged.append((lo, hi))
        while merged and merged[0][0] <= self.watermark:
            self.watermark = max(self.watermark, merged.pop(0)[1] + 1)
        self.done = merged

    def skip_to(self, offset: int) -> None:
        """Records below ``offset`` are gone (log start after retention): nothing left to replay there."""
        self.watermark = max(self.watermark, offset)
        self._normalise(self.done)

    def encode(self) -> str:
        """The offset-metadata string: ``a-b`` ranges and single offsets, comma-separated."""
        return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in self.done)

    @classmethod
    def decode(cls, watermark: int, metadata: str | None) -> ReplayState:
        """The state from a committed offset and its metadata (unreadable metadata counts as empty)."""
        done: list[tuple[int, int]] = []
        for part in (metadata or "").split(","):
            lo, _, hi = part.strip().partition("-")
            if lo.isdigit() and (not hi or hi.isdigit()):
                done.append((int(lo), int(hi or lo)))
        state = cls(watermark=max(watermark, 0))
        state._normalise(done)
        return state


@dataclass(frozen=True)
class DeadLetterRecord:
    """One message of the dead-letter topic, where it is, and whether it was replayed.

    ``event`` is None when the message itself is not a dead-letter event (``error`` says why).
    """

    partition: int
    offset: int
    event: DeadLetterEvent | None
    replayed: bool
    error: str | None = None

    def preview(self, width: int = 60) -> str:
        """The start of the original message, printable (escapes for control and invalid bytes).

        >>> r = DeadLetterRecord(0, 3, dead_letter_for(b'\\xffok\\n{"a"', "bad", "t"), False)
        >>> r.preview()
        '\\\\xffok\\\\n{"a"'
        """
        if self.event is None:
            return ""
        raw = original_bytes(self.event)
        text = raw[: width * 4].decode("utf-8", "backslashreplace")
        text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
        return text if len(text) <= width else text[: width - 1] + "…"

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready view (the original bytes as the event carries them)."""
        base: dict[str, Any] = {"partition": self.partition, "offset": self.offset, "replayed": self.replayed}
        if self.event is None:
            return base | {"error": self.error}
        return base | self.event.model_dump(mode="json")


@dataclass
class ReplayReport:
    """What a replay did (or, with ``dry_run``, would do)."""

    replayed: list[DeadLetterRecord] = field(default_factory=list)
    already: int = 0
    not_matching: int = 0
    unreadable: int = 0
    unknown_topic: int = 0
    failed: int = 0
    deferred: int = 0


class _DeadLetterTopic:
    """A reader of the whole dead-letter topic, with the replay group's bookkeeping."""

    def __init__(self, settings: Settings, group: str, timeout: float) -> None:
        from kafka import TopicPartition

        from atalaia.kafka import clients

        self.settings, self.group, self.timeout = settings, group, timeout
        self.topic = settings.topic("deadletter")
        self.consumer = clients.consumer(
            settings,
            group_id=group,
            client_id="atalaia-deadletter",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            request_timeout_ms=int(max(timeout, 10) * 1000) + 1000,
            # Assigned partitions, no subscription: this consumer never joins the group, it only
            # reads and commits the group's offsets (the replay bookkeeping). Replays are not
            # coordinated with each other: run one at a time.
        )
        parts = self.consumer.partitions_for_topic(self.topic)
        if not parts:
            deadline = time.monotonic() + timeout
            while not parts and time.monotonic() < deadline:
                time.sleep(0.2)
                parts = self.consumer.partitions_for_topic(self.topic)
        if not parts:
            self.consumer.close()
            raise RuntimeError(
                f"topic {self.topic} not found on {settings.kafka_bootstrap}; create the topics with "
                "`atalaia kafka topics` or check ATALAIA_TOPIC_NAMESPACE"
            )
        self.partitions = [TopicPartition(self.topic, p) for p in sorted(parts)]
        self.consumer.assign(self.partitions)
        self.begin = self.consumer.beginning_offsets(self.partitions)
        self.end = self.consumer.end_offsets(self.partitions)
        self.state: dict[int, ReplayState] = {}
        for tp in self.partitions:
            committed = self.consumer.committed(tp, metadata=True)
            state = (
                ReplayState.decode(committed.offset, committed.metadata)
                if committed is not None and committed.offset is not None and committed.offset >= 0
                else ReplayState()
            )
            state.skip_to(self.begin[tp])
            self.state[tp.partition] = state
        self._initial = {p: ReplayState(s.watermark, list(s.done)) for p, s in self.state.items()}

    def saved_state(self, partition: int) -> ReplayState:
        """A copy of ``partition``'s replay state as committed when this reader started."""
        s = self._initial[partition]
        return ReplayState(s.watermark, list(s.done))

    def records(self, everything: bool = False) -> Iterator[DeadLetterRecord]:
        """Records up to the end offsets seen at start, in offset order per partition: from the
        replay watermark on, or with ``everything`` from the start of the log."""
        remaining = set()
        for tp in self.partitions:
            start = self.begin[tp] if everything else self.state[tp.partition].watermark
            if start < self.end[tp]:
                self.consumer.seek(tp, start)
                remaining.add(tp)
            else:
                self.consumer.pause(tp)
        deadline = time.monotonic() + self.timeout
        while remaining:
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {self.topic} took more than {self.timeout:.0f} s")
            polled = self.consumer.poll(timeout_ms=500, max_records=1000)
            for tp, messages in polled.items():
                for msg in messages:
                    if msg.offset < self.end[tp]:
                        yield self._record(tp.partition, msg.offset, msg.value)
            for tp in list(remaining):
                if self.consumer.position(tp) >= self.end[tp]:
                    remaining.discard(tp)
                    self.consumer.pause(tp)

    def _record(self, partition: int, offset: int, value: bytes | None) -> DeadLetterRecord:
        done = self.state[partition].is_done(offset)
        try:
            event = parse_event(value or b"", DeadLetterEvent)
        except EventError as exc:
            return DeadLetterRecord(partition, offset, None, done, exc.reason)
        return DeadLetterRecord(partition, offset, event, done)

    def commit(self, partitions: Iterable[int]) -> None:
        """Store the replay state of ``partitions`` as the group's committed offsets."""
        from kafka import TopicPartition
        from kafka.structs import OffsetAndMetadata

        offsets = {
            TopicPartition(self.topic, p): OffsetAndMetadata(self.state[p].watermark, self.state[p].encode(), -1)
            for p in partitions
        }
        if offsets:
            self.consumer.commit(offsets)

    def close(self) -> None:
        self.consumer.close(autocommit=False)


def list_dead_letters(
    settings: Settings,
    filters: DeadLetterFilter | None = None,
    limit: int | None = None,
    group: str | None = None,
    timeout: float = 30.0,
) -> list[DeadLetterRecord]:
    """The dead-letter records that match ``filters``, newest first, at most ``limit``.

    Reads the whole topic (it is small: one record per message a consumer refused). A message
    that is not a dead-letter event is listed with its ``error`` when no filter is given.
    ``replayed`` comes from the replay group's committed offsets; nothing is committed.
    """
    filters = filters or DeadLetterFilter()
    reader = _DeadLetterTopic(settings, group or replay_group(settings), timeout)
    found: list[DeadLetterRecord] = []
    try:
        for rec in reader.records(everything=True):
            if rec.event is None:
                if filters == DeadLetterFilter():
                    found.append(rec)
            elif filters.matches(rec.event):
                found.append(rec)
    finally:
        reader.close()
    oldest = datetime.min.replace(tzinfo=UTC)
    found.sort(key=lambda r: (r.event.ts if r.event is not None else oldest, r.partition, r.offset), reverse=True)
    return found[:limit] if limit else found


def replay_dead_letters(
    settings: Settings,
    filters: DeadLetterFilter | None = None,
    limit: int | None = None,
    dry_run: bool = False,
    group: str | None = None,
    timeout: float = 30.0,
) -> ReplayReport:
    """Publish the original bytes of matching, not yet replayed records to their source topics.

    Each message goes to its ``source_topic`` (only topics of this namespace; others are counted
    in ``unknown_topic``), keyed like the original producer (the event's ``event_id``, or
    ``source_event_id`` for metrics), with an ``atalaia-replay-of`` header holding the dead-letter
    record's id, and ``acks=all``. Only after the broker confirmed a message is its record marked
    replayed, and the marks are committed to the replay group after each partition: a second
    replay skips them (``already``). A crash between the confirmation and the commit can publish
    up to one partition's batch again; the stores are idempotent on ``event_id``, so the effect is
    unchanged. ``dry_run`` publishes and commits nothing and lists what would be replayed.
    """
    from atalaia.kafka import clients

    filters = filters or DeadLetterFilter()
    known = {spec.name for spec in topic_specs(settings)}
    reader = _DeadLetterTopic(settings, group or replay_group(settings), timeout)
    report = ReplayReport()
    producer = None if dry_run else clients.producer(settings, "atalaia-deadletter-replay", acks="all", linger_ms=5)
    try:
        by_partition: dict[int, list[DeadLetterRecord]] = {}
        for rec in reader.records(everything=True):  # from the start, so `already` counts them all
            if rec.replayed:
                report.already += 1
            elif rec.event is None:
                report.unreadable += 1
            elif not filters.matches(rec.event):
                report.not_matching += 1
            elif rec.event.source_topic not in known:
                report.unknown_topic += 1
            elif limit is not None and len(report.replayed) + sum(map(len, by_partition.values())) >= limit:
                report.deferred += 1
            else:
                by_partition.setdefault(rec.partition, []).append(rec)
        for partition, records in sorted(by_partition.items()):
            if producer is None:
                report.replayed.extend(records)
                continue
            state = reader.state[partition]
            sent = []
            for rec in records:
                trial = ReplayState(state.watermark, list(state.done))
                trial.mark(rec.offset)
                if len(trial.encode()) > MAX_STATE_CHARS:
                    # Too many scattered marks for Kafka's offset metadata: leave the rest for a
                    # later (less selective) replay rather than replay without a record of it.
                    report.deferred += 1
                    continue
                assert rec.event is not None
                raw = original_bytes(rec.event)
                future = producer.send(
                    rec.event.source_topic,
                    key=_key_of(raw),
                    value=raw,
                    headers=[(REPLAY_HEADER, str(rec.event.event_id).encode())],
                )
                state.mark(rec.offset)
                sent.append((rec, future))
            producer.flush(timeout=timeout)
            for rec, future in sent:
                try:
                    future.get(timeout=timeout)
                    report.replayed.append(rec)
                except Exception as exc:  # noqa: BLE001 - counted and logged; the record stays unreplayed
                    report.failed += 1
                    log.error(
                        "dead-letter replay failed",
                        extra={"partition": partition, "offset": rec.offset, "error": f"{type(exc).__name__}: {exc}"},
                    )
            if report.failed:
                # Rebuild the marks from what was confirmed only, so nothing unsent counts as done.
                confirmed = {r.offset for r in report.replayed if r.partition == partition}
                fresh = reader.saved_state(partition)
                for offset in sorted(confirmed):
                    fresh.mark(offset)
                reader.state[partition] = fresh
            reader.commit([partition])
    finally:
        if producer is not None:
            producer.close(timeout=10)
        reader.close()
    return report


def _key_of(raw: bytes) -> bytes | None:
    """The Kafka key the original producer used: the event's id (a metric's source event id).

    >>> _key_of(b'{"type": "metric", "event_id": "a", "source_event_id": "b"}'), _key_of(b"junk")
    (b'b', None)
    """
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict):
        return None
    key = data.get("source_event_id") if data.get("type") == "metric" else data.get("event_id")
    return str(key).encode() if isinstance(key, str | int) else None
