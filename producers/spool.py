"""A disk spool: events that could not reach Kafka, kept in order until they can be replayed.

Layout: append-only JSON-lines **segment files** and a persisted **read offset**.

- ``<name>.jsonl`` is segment 0, ``<name>.00000001.jsonl`` segment 1, and so on. Appends go to
  the last segment (fsync'd per append, or per group of appends); a segment past
  ``segment_bytes`` is closed and the next one started.
- ``<name>.jsonl.offset`` holds the read offset (segment, byte): where the oldest record still
  owed starts. Replay reads a chunk from there and, once the broker acknowledged it, writes the
  new offset (a small file written to a temporary and renamed over: O(1) per chunk, never a
  rewrite of the spool). Segments wholly before the offset are deleted; when everything was
  read, every segment goes. Segment numbers only grow, so an offset left on disk by a crash can
  name a deleted segment but never a newer one.
- A record delivered out of turn (a later record of a chunk whose earlier one failed) is blanked
  in place (same byte length, so offsets stay valid); readers skip blank lines.

Crash safety: a crash mid-append leaves a torn last line; it is cut off when the spool is opened,
so the next append starts on a fresh line instead of merging with the torn one (which would lose
both). A crash between the broker's acknowledgement and the offset write re-sends that chunk
after the restart: a duplicate, never a loss (the sinks write idempotently by ``event_id``).
Counts are of readable records, never raw lines. The spool has a size cap (``max_bytes``, the
segment files' bytes): an append past it raises :class:`SpoolFullError` and the producer counts
the events as lost, so a long outage costs counted events rather than a full disk.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class SpoolFullError(OSError):
    """The spool reached its size cap (``ATALAIA_SPOOL_MAX_BYTES``)."""


@dataclass(frozen=True)
class SpooledMessage:
    """One message waiting for the broker; ``created`` (epoch seconds) dates it for health checks."""

    topic: str
    key: bytes | None
    value: bytes
    created: float = field(default_factory=time.time, compare=False)


def _encode(message: SpooledMessage) -> str:
    record = {
        "topic": message.topic,
        "key": base64.b64encode(message.key).decode() if message.key is not None else None,
        "value": base64.b64encode(message.value).decode(),
        "t": round(message.created, 3),
    }
    return json.dumps(record, separators=(",", ":")) + "\n"


def _decode(line: str | bytes) -> SpooledMessage | None:
    """The message of one spool line, or None for an unreadable line (an old torn write)."""
    try:
        rec = json.loads(line)
        key = base64.b64decode(rec["key"]) if rec["key"] is not None else None
        return SpooledMessage(rec["topic"], key, base64.b64decode(rec["value"]), float(rec.get("t") or 0.0))
    except (ValueError, KeyError, TypeError):
        return None


#: Bytes after which the last segment is closed and a new one started.
SEGMENT_BYTES = 8 * 1024 * 1024
_SEGMENT_NAME = re.compile(r"\.(\d{8,})$")


@dataclass(frozen=True)
class SpoolRecord:
    """A spooled message and where it lies: handed back to :meth:`Spool.remove_records` once delivered."""

    message: SpooledMessage
    segment: int
    start: int
    end: int


@dataclass(frozen=True)
class _Line:
    segment: int
    start: int
    end: int
    message: SpooledMessage | None  # None: blank, blanked in place, or unreadable


class Spool:
    """A FIFO of messages on disk: segment files and a read offset.

    >>> import tempfile
    >>> s = Spool(Path(tempfile.mkdtemp()) / "spool.jsonl")
    >>> s.append(SpooledMessage("t", b"k", b'{"a": 1}'))
    >>> len(s), [m.value for m in s.read()]
    (1, [b'{"a": 1}'])
    >>> s.clear(); len(s)
    0
    """

    def __init__(self, path: Path, max_bytes: int | None = None, segment_bytes: int = SEGMENT_BYTES) -> None:
        self.path = path
        self.max_bytes = max_bytes
        # Under a small cap, segments are a fraction of it, so read records leave the disk soon.
        self.segment_bytes = segment_bytes if max_bytes is None else max(1, min(segment_bytes, max_bytes // 4))
        self._lock = threading.Lock()
        self._segments: dict[int, int] = {}  # segment number -> bytes, in order
        self._offset: tuple[int, int] = (0, 0)  # (segment, byte) of the oldest record still owed
        self._count = 0
        self._oldest: float | None = None
        #: Why the spool cannot be used (None when it can): the service still starts and answers,
        #: and each event that then needs the spool is counted as lost by the producer.
        self.error: str | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._open()
        except OSError as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            log.error(
                "spool unusable: events will be lost while Kafka is unreachable",
                extra={"spool": str(path), "error": self.error},
            )

    def __len__(self) -> int:
        return self._count

    @property
    def size_bytes(self) -> int:
        """Bytes the segment files hold (what the cap limits)."""
        return sum(self._segments.values())

    @property
    def offset_path(self) -> Path:
        """The file holding the read offset."""
        return self.path.with_name(self.path.name + ".offset")

    def segment_path(self, segment: int) -> Path:
        """The file of segment ``segment`` (segment 0 is ``path`` itself)."""
        if segment == 0:
            return self.path
        return self.path.with_name(f"{self.path.stem}.{segment:08d}{self.path.suffix}")

    def segment_files(self) -> list[Path]:
        """The segment files on disk, oldest first."""
        return [self.segment_path(n) for n in sorted(self._segments)]

    def oldest_age_s(self) -> float | None:
        """Seconds since the oldest spooled event was created (None when the spool is empty)."""
        if not self._count or self._oldest is None:
            return None
        return max(0.0, time.time() - self._oldest)

    # -- opening ----------------------------------------------------------------------------
    def _list_segments(self) -> dict[int, int]:
        found: dict[int, int] = {}
        if self.path.exists():
            found[0] = self.path.stat().st_size
        for candidate in self.path.parent.glob(f"{self.path.stem}.*{self.path.suffix}"):
            name = candidate.name[: len(candidate.name) - len(self.path.suffix)]
            match = _SEGMENT_NAME.search(name)
            if match and name[: match.start()] == self.path.stem:
                found[int(match.group(1))] = candidate.stat().st_size
        return dict(sorted(found.items()))

    def _open(self) -> None:
        segments = self._list_segments()
        for number in segments:
            segments[number] = _truncate_torn_tail(self.segment_path(number))
        self._segments = segments
        stored = self._load_offset()
        if stored is not None and stored[0] in segments:
            # Segments before the offset's were read (their deletion was cut short by a crash).
            for number in [n for n in segments if n < stored[0]]:
                self._delete_segment(number)
            self._offset = (stored[0], min(stored[1], segments[stored[0]]))
        else:
            # No offset, or its segment was deleted once everything was read: whatever exists
            # now was appended after that, and is owed (at worst a duplicate, never a loss).
            if segments:
                self._offset = (min(segments), 0)
            else:  # numbers only grow: a new segment is never one the stale offset names
                self._offset = (stored[0] + 1 if stored is not None else 0, 0)
        count, oldest = 0, None
        for line in self._lines(self._offset):
            if line.message is not None:
                count += 1
                if oldest is None:
                    oldest = line.message.created
        self._count, self._oldest = count, oldest

    def _load_offset(self) -> tuple[int, int] | None:
        try:
            rec = json.loads(self.offset_path.read_text(encoding="utf-8"))
            return int(rec["segment"]), int(rec["byte"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            log.warning(
                "spool: unreadable read offset; replaying from the first segment", extra={"spool": str(self.path)}
            )
            return None

    # -- reading ----------------------------------------------------------------------------
    def _lines(self, start: tuple[int, int]) -> Iterator[_Line]:
        """Whole lines from ``start`` to the end of the last segment (a torn tail is not a line)."""
        first, pos = start
        for number in [n for n in self._segments if n >= first]:
            begin = pos if number == first else 0
            try:
                fh = self.segment_path(number).open("rb")
            except FileNotFoundError:
                continue
            with fh:
                fh.seek(begin)
                for raw in fh:
                    if not raw.endswith(b"\n"):
                        return
                    end = begin + len(raw)
                    yield _Line(number, begin, end, _decode(raw) if raw.strip() else None)
                    begin = end

    def read_records(self, limit: int | None = None) -> list[SpoolRecord]:
        """Spooled records from the read offset, oldest first (at most ``limit``); O(limit), not O(spool)."""
        out: list[SpoolRecord] = []
        with self._lock:
            complete = True
            for line in self._lines(self._offset):
                if line.message is None:
                    continue
                if limit is not None and len(out) >= limit:
                    complete = False
                    break
                out.append(SpoolRecord(line.message, line.segment, line.start, line.end))
            if complete:  # read to the end: the count is exact (an erasure may have blanked records)
                self._count = len(out)
                self._oldest = out[0].message.created if out else None
        return out

    def read(self, limit: int | None = None) -> list[SpooledMessage]:
        """Spooled messages, oldest first (at most ``limit``). Unreadable lines are skipped."""
        return [r.message for r in self.read_records(limit)]

    # -- writing ----------------------------------------------------------------------------
    def append(self, message: SpooledMessage) -> None:
        """Append and fsync one message; raises OSError (SpoolFullError past the cap) if refused."""
        self.append_many([message])

    def append_many(self, messages: list[SpooledMessage]) -> None:
        """Append ``messages`` with a single fsync (group commit), all or none; raises OSError if refused.

        One fsync per message caps a spool at the disk's sync rate (~100-200 events/s measured);
        one per batch lets the sender keep up with a backlog while Kafka is away.
        """
        if not messages:
            return
        data = "".join(_encode(m) for m in messages).encode("utf-8")
        with self._lock:
            used = self.size_bytes
            if self.max_bytes is not None and used + len(data) > self.max_bytes:
                raise SpoolFullError(f"spool cap of {self.max_bytes} bytes reached ({used} used)")
            number = max(self._segments) if self._segments else self._offset[0]
            size = self._segments.get(number, 0)
            if size and size + len(data) > self.segment_bytes:
                number += 1  # close this segment: a batch never straddles two
                size = 0
            path = self.segment_path(number)
            with path.open("ab") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            if not size:
                _fsync_dir(path.parent)  # the new file's name survives a crash too
            self._segments[number] = size + len(data)
            if not self._count:
                self._oldest = messages[0].created
            self._count += len(messages)

    def remove_records(self, records: Iterable[SpoolRecord]) -> None:
        """Take delivered (or dead-lettered) ``records`` out of the spool; the rest stay, in order.

        The read offset moves past the leading run of them and is written once (O(1)); a record
        delivered out of turn, behind one still owed, is blanked in place. Segments wholly read
        are deleted. A crash before the offset reaches the disk re-sends: a duplicate, not a loss.
        """
        targets = {(r.segment, r.start) for r in records}
        if not targets:
            return
        last = max(targets)
        with self._lock:
            offset, leading, removed = self._offset, True, 0
            blank: list[_Line] = []
            for line in self._lines(self._offset):
                key = (line.segment, line.start)
                if key > last and not (leading and line.message is None):
                    break
                hit = key in targets
                if leading and (hit or line.message is None):
                    offset = (line.segment, line.end)
                    removed += hit
                    continue
                leading = False
                if hit:
                    blank.append(line)
                    removed += 1
            for line in blank:
                with self.segment_path(line.segment).open("r+b") as fh:
                    fh.seek(line.start)
                    fh.write(b" " * (line.end - line.start - 1) + b"\n")
            self._count = max(0, self._count - removed)
            self._move_offset(offset)

    def remove(self, positions: Iterable[int]) -> None:
        """Remove the messages at ``positions`` (indices into :meth:`read`'s order), keeping the rest in order."""
        drop = sorted(set(positions))
        if not drop:
            return
        records = self.read_records(limit=drop[-1] + 1)
        self.remove_records(records[i] for i in drop if i < len(records))

    def drop_first(self, n: int) -> None:
        """Remove the ``n`` oldest messages (after they were delivered): the offset moves, nothing is rewritten."""
        self.remove(range(n))

    def clear(self) -> None:
        """Remove every message."""
        with self._lock:
            last = max(self._segments) if self._segments else self._offset[0]
            self._count = 0
            self._move_offset((last, self._segments.get(last, 0)))

    def _move_offset(self, offset: tuple[int, int]) -> None:
        """Persist ``offset``, delete segments wholly before it; start afresh when all was read (lock held)."""
        number, pos = offset
        later = [n for n in self._segments if n > number]
        if later and pos >= self._segments.get(number, 0):
            number, pos = later[0], 0  # the end of a segment is the start of the next
        self._offset = (number, pos)
        self._write_offset()
        for n in [n for n in self._segments if n < number]:
            self._delete_segment(n)
        if not self._segments or (number == max(self._segments) and pos >= self._segments[number]):
            # Everything was read: the last segment goes too. The next append starts a segment of
            # a new number, never one an offset on disk could name (a stale offset would skip it).
            for n in list(self._segments):
                self._delete_segment(n)
            self._offset = (number + 1, 0)
            self._write_offset()
            self._count, self._oldest = 0, None
            return
        self._oldest = next((ln.message.created for ln in self._lines(self._offset) if ln.message is not None), None)
        if self._oldest is None:
            self._count = 0

    def _write_offset(self) -> None:
        """Write the read offset (temporary file, fsync, rename); a failure only risks duplicates."""
        tmp = self.offset_path.with_name(self.offset_path.name + ".tmp")
        try:
            with tmp.open("w", encoding="utf-8") as fh:
                fh.write(json.dumps({"segment": self._offset[0], "byte": self._offset[1]}) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.offset_path)
        except OSError as exc:
            log.warning(
                "spool: read offset not saved; a restart re-sends what was delivered since (duplicates)",
                extra={"spool": str(self.path), "error": str(exc)},
            )

    def _delete_segment(self, number: int) -> None:
        try:
            self.segment_path(number).unlink(missing_ok=True)
        except OSError as exc:
            log.warning("spool: read segment not deleted", extra={"spool": str(self.path), "error": str(exc)})
            return
        self._segments.pop(number, None)


def _truncate_torn_tail(path: Path) -> int:
    """Cut a last line without its newline (a crash mid-append), so the next append is whole; the new size."""
    with path.open("rb+") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        if size == 0:
            return 0
        fh.seek(size - 1)
        if fh.read(1) == b"\n":
            return size
        # Walk back to the last newline; everything after it is the torn record.
        pos = size
        while pos > 0:
            step = min(65536, pos)
            fh.seek(pos - step)
            chunk = fh.read(step)
            nl = chunk.rfind(b"\n")
            if nl >= 0:
                pos = pos - step + nl + 1
                break
            pos -= step
        fh.truncate(pos)
        fh.flush()
        os.fsync(fh.fileno())
    log.warning("spool: torn last record cut off", extra={"spool": str(path), "bytes": size - pos})
    return pos


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Records of a JSON-lines file, skipping unreadable lines (used for the dead-letter file)."""
    if not path.exists():
        return []
    out = []
    with path.open("r", encoding="utf-8") as fh:
        for line in fh:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out
