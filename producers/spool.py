"""A disk spool: events that could not reach Kafka, kept in order until they can be replayed.

Append-only JSON lines, fsync'd per append (or per group of appends), so an event accepted by the
SDK survives a crash of the process as well as a broker outage.

Crash safety: a crash mid-append leaves a torn last line; it is cut off when the spool is opened,
so the next append starts on a fresh line instead of merging with the torn one (which would lose
both). Counts are of readable records, never raw lines. The spool has a size cap
(``max_bytes``): an append past it raises :class:`SpoolFullError` and the producer counts the
events as lost, so a long outage costs counted events rather than a full disk.
"""

from __future__ import annotations

import base64
import json
import logging
import os
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


def _decode(line: str) -> SpooledMessage | None:
    """The message of one spool line, or None for an unreadable line (an old torn write)."""
    try:
        rec = json.loads(line)
        key = base64.b64decode(rec["key"]) if rec["key"] is not None else None
        return SpooledMessage(rec["topic"], key, base64.b64decode(rec["value"]), float(rec.get("t") or 0.0))
    except (ValueError, KeyError, TypeError):
        return None


class Spool:
    """A FIFO of messages on disk.

    >>> import tempfile
    >>> s = Spool(Path(tempfile.mkdtemp()) / "spool.jsonl")
    >>> s.append(SpooledMessage("t", b"k", b'{"a": 1}'))
    >>> len(s), [m.value for m in s.read()]
    (1, [b'{"a": 1}'])
    >>> s.clear(); len(s)
    0
    """

    def __init__(self, path: Path, max_bytes: int | None = None) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._count = 0
        self._bytes = 0
        self._oldest: float | None = None
        #: Why the spool cannot be used (None when it can): the service still starts and answers,
        #: and each event that then needs the spool is counted as lost by the producer.
        self.error: str | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if path.exists():
                self._truncate_torn_tail()
                self._recount()
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
        """Bytes the spool file holds."""
        return self._bytes

    def oldest_age_s(self) -> float | None:
        """Seconds since the oldest spooled event was created (None when the spool is empty)."""
        if not self._count or self._oldest is None:
            return None
        return max(0.0, time.time() - self._oldest)

    def _truncate_torn_tail(self) -> None:
        """Cut a last line without its newline (a crash mid-append), so the next append is whole."""
        with self.path.open("rb+") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            if size == 0:
                return
            fh.seek(size - 1)
            if fh.read(1) == b"\n":
                return
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
        log.warning("spool: torn last record cut off", extra={"spool": str(self.path), "bytes": size - pos})

    def _recount(self) -> None:
        count, oldest = 0, None
        for message in self._messages():
            count += 1
            if oldest is None:
                oldest = message.created
        self._count, self._oldest = count, oldest
        self._bytes = self.path.stat().st_size if self.path.exists() else 0

    def _lines(self) -> Iterator[str]:
        with self.path.open("r", encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    yield line

    def _messages(self) -> Iterator[SpooledMessage]:
        for line in self._lines():
            message = _decode(line)
            if message is not None:
                yield message

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
        data = "".join(_encode(m) for m in messages)
        size = len(data.encode("utf-8"))
        with self._lock:
            if self.max_bytes is not None and self._bytes + size > self.max_bytes:
                raise SpoolFullError(f"spool cap of {self.max_bytes} bytes reached ({self._bytes} used)")
            with self.path.open("a", encoding="utf-8") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            if not self._count:
                self._oldest = messages[0].created
            self._count += len(messages)
            self._bytes += size

    def read(self, limit: int | None = None) -> list[SpooledMessage]:
        """Spooled messages, oldest first (at most ``limit``). Unreadable lines are skipped."""
        if not self.path.exists():
            return []
        out: list[SpooledMessage] = []
        with self._lock:
            for message in self._messages():
                out.append(message)
                if limit is not None and len(out) >= limit:
                    break
        return out

    def remove(self, positions: Iterable[int]) -> None:
        """Remove the messages at ``positions`` (indices into :meth:`read`'s order), keeping the rest in order.

        Used after a replay: delivered and dead-lettered records go, the ones still owed stay, and
        nothing delivered is ever kept to be sent again.
        """
        drop = set(positions)
        if not drop:
            return
        with self._lock:
            if not self.path.exists():
                return
            kept: list[str] = []
            index = 0
            for line in self._lines():
                if _decode(line) is None:
                    continue  # an unreadable line is not a message: it goes with the rewrite
                if index not in drop:
                    kept.append(line)
                index += 1
            tmp = self.path.with_suffix(".tmp")
            with tmp.open("w", encoding="utf-8") as fh:
                fh.writelines(kept)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
            self._count = len(kept)
            self._bytes = sum(len(line.encode("utf-8")) for line in kept)
            first = _decode(kept[0]) if kept else None
            self._oldest = first.created if first is not None else None

    def drop_first(self, n: int) -> None:
        """Remove the ``n`` oldest messages (after they were delivered)."""
        self.remove(range(n))

    def clear(self) -> None:
        """Remove every message."""
        self.drop_first(self._count)


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
