"""The producer's local dead-letter file: events Kafka can never take, kept with the reason.

An event that no retry can deliver (over the size limit, refused by the broker as too large, an
invalid topic) must not sit at the head of the spool, where it would hold up every event behind
it. It goes here instead: one JSON line per event with the time, topic, reason and the event
itself, fsync'd, and counted (``atalaia_events_dead_lettered``). An operator can read the file,
fix the cause and re-emit what matters.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from producers.spool import SpooledMessage, read_jsonl

log = logging.getLogger(__name__)


class LocalDeadLetter:
    """Append-only JSON lines of undeliverable events.

    >>> import tempfile
    >>> dl = LocalDeadLetter(Path(tempfile.mkdtemp()) / "dead.jsonl")
    >>> dl.add(SpooledMessage("t", None, b'{"a": 1}'), "too large")
    True
    >>> [(r["topic"], r["reason"], r["value"]) for r in dl.read()]
    [('t', 'too large', '{"a": 1}')]
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def add(self, message: SpooledMessage, reason: str) -> bool:
        """Record ``message`` with ``reason``; False if the disk refused (the caller counts it lost)."""
        record = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "topic": message.topic,
            "key": message.key.decode("utf-8", "replace") if message.key is not None else None,
            "reason": reason,
            "bytes": len(message.value),
            "value": message.value.decode("utf-8", "replace"),
        }
        line = json.dumps(record, separators=(",", ":")) + "\n"
        try:
            with self._lock:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with self.path.open("a", encoding="utf-8") as fh:
                    fh.write(line)
                    fh.flush()
                    os.fsync(fh.fileno())
        except OSError as exc:
            log.error("event lost: dead-letter file unwritable", extra={"path": str(self.path), "error": str(exc)})
            return False
        log.error(
            "event dead-lettered locally: Kafka cannot take it",
            extra={"topic": message.topic, "reason": reason, "bytes": len(message.value), "path": str(self.path)},
        )
        return True

    def read(self) -> list[dict[str, Any]]:
        """Every record, oldest first."""
        return read_jsonl(self.path)
