"""A disk spool: events that could not reach Kafka, kept in order until they can be replayed.

Append-only JSON lines, fsync'd per append, so an event accepted by the SDK survives a crash of
the process as well as a broker outage.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SpooledMessage:
    """One message waiting for the broker."""

    topic: str
    key: bytes | None
    value: bytes


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

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._count = 0
        #: Why the spool cannot be used (None when it can): the service still starts and answers,
        #: and each event that then needs the spool is counted as lost by the producer.
        self.error: str | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._count = sum(1 for _ in self._lines()) if path.exists() else 0
        except OSError as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            log.error(
                "spool unusable: events will be lost while Kafka is unreachable",
                extra={"spool": str(path), "error": self.error},
            )

    def __len__(self) -> int:
        return self._count

    def _lines(self) -> Iterator[str]:
        with self.path.open("r", encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    yield line

    def append(self, message: SpooledMessage) -> None:
        """Append and fsync one message; raises OSError if the disk refuses."""
        record = {
            "topic": message.topic,
            "key": base64.b64encode(message.key).decode() if message.key is not None else None,
            "value": base64.b64encode(message.value).decode(),
        }
        line = json.dumps(record, separators=(",", ":")) + "\n"
        with self._lock:
            with self.path.open("a", encoding="utf-8") as fh:
                fh.write(line)
                fh.flush()
                os.fsync(fh.fileno())
            self._count += 1

    def append_many(self, messages: list[SpooledMessage]) -> None:
        """Append ``messages`` with a single fsync (group commit); raises OSError if the disk refuses.

        One fsync per message caps a spool at the disk's sync rate (~100-200 events/s measured);
        one per batch lets the sender keep up with a backlog while Kafka is away.
        """
        lines = [
            json.dumps(
                {
                    "topic": m.topic,
                    "key": base64.b64encode(m.key).decode() if m.key is not None else None,
                    "value": base64.b64encode(m.value).decode(),
                },
                separators=(",", ":"),
            )
            + "\n"
            for m in messages
        ]
        with self._lock:
            with self.path.open("a", encoding="utf-8") as fh:
                fh.write("".join(lines))
                fh.flush()
                os.fsync(fh.fileno())
            self._count += len(lines)

    def read(self) -> list[SpooledMessage]:
        """All spooled messages, oldest first. A torn last line (crash mid-write) is skipped."""
        if not self.path.exists():
            return []
        out = []
        with self._lock:
            for line in self._lines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                key = base64.b64decode(rec["key"]) if rec["key"] is not None else None
                out.append(SpooledMessage(rec["topic"], key, base64.b64decode(rec["value"])))
        return out

    def drop_first(self, n: int) -> None:
        """Remove the ``n`` oldest messages (after they were delivered)."""
        with self._lock:
            if not self.path.exists():
                return
            lines = list(self._lines())[n:]
            tmp = self.path.with_suffix(".tmp")
            with tmp.open("w", encoding="utf-8") as fh:
                fh.writelines(lines)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
            self._count = len(lines)

    def clear(self) -> None:
        """Remove every message."""
        self.drop_first(self._count)
