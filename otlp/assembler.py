"""Joining GenAI spans with the log records that carry their content, then emitting events.

Instrumentations on the older conventions (and the current ones in ``event_only`` mode) send a
call's messages as log records (``/v1/logs``), apart from its span (``/v1/traces``), each on its
own export schedule. Records that arrive first wait (keyed by trace and span id) for their span.
A span without content from a service that has sent GenAI log records waits up to
``wait_s`` for them; a span from any other service is emitted at once, so an app without
content capture adds no delay.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from atalaia.events import InferenceEvent
from otlp.decode import LogRecord, Span
from otlp.genai import is_chat_span, span_to_event

log = logging.getLogger(__name__)

#: How long log records wait for their span, and how many may wait.
LOG_TTL_S = 120.0
MAX_WAITING_LOGS = 100_000
MAX_PENDING_SPANS = 100_000


@dataclass
class ReceiverStats:
    """Counters of what the receiver did, exposed on ``/metrics``."""

    requests: int = 0
    rejected_requests: int = 0
    spans: int = 0
    genai_spans: int = 0
    skipped_spans: int = 0
    log_records: int = 0
    events: int = 0
    events_without_content: int = 0
    invalid_spans: int = 0


class Assembler:
    """Turns chat spans (plus their log records) into inference events and hands them to ``emit``."""

    def __init__(
        self,
        emit: Callable[[InferenceEvent], None],
        service: str,
        price_for: Callable[[str], tuple[float, float]],
        keep_media: bool = False,
        wait_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.emit, self.service, self.price_for, self.keep_media = emit, service, price_for, keep_media
        self.wait_s, self.clock = wait_s, clock
        self.stats = ReceiverStats()
        self._logs: OrderedDict[tuple[str, str], tuple[float, list[LogRecord]]] = OrderedDict()
        self._pending: OrderedDict[tuple[str, str], tuple[float, Span]] = OrderedDict()
        self._log_services: set[str] = set()

    # -- input -------------------------------------------------------------------------------
    def add_spans(self, spans: list[Span], skipped: int) -> None:
        """GenAI spans of one export request (and how many other spans it held)."""
        self.stats.spans += len(spans) + skipped
        self.stats.skipped_spans += skipped
        now = self.clock()
        for span in spans:
            if not is_chat_span(span.attributes):
                self.stats.skipped_spans += 1  # embeddings, tools, agents: not a chat call
                continue
            self.stats.genai_spans += 1
            key = (span.trace_id, span.span_id)
            waiting = self._logs.pop(key, None)
            if waiting is not None:
                self._finish(span, waiting[1])
            elif self.wait_s > 0 and not self._has_content(span) and self._service(span) in self._log_services:
                self._pending[key] = (now + self.wait_s, span)
                while len(self._pending) > MAX_PENDING_SPANS:
                    _, (_, oldest) = self._pending.popitem(last=False)
                    self._finish(oldest, [])
            else:
                self._finish(span, [])

    def add_logs(self, records: list[LogRecord], skipped: int) -> None:
        """GenAI log records of one export request."""
        self.stats.log_records += len(records)
        now = self.clock()
        ready: dict[tuple[str, str], list[LogRecord]] = {}
        for record in records:
            self._log_services.add(self._service(record))
            key = (record.trace_id, record.span_id)
            if key in self._pending:
                ready.setdefault(key, []).append(record)
                continue
            entry = self._logs.get(key)
            if entry is None:
                self._logs[key] = (now + LOG_TTL_S, [record])
            else:
                entry[1].append(record)
        while len(self._logs) > MAX_WAITING_LOGS:
            self._logs.popitem(last=False)
        for key, found in ready.items():
            _, span = self._pending.pop(key)
            self._finish(span, found)

    def expire(self) -> None:
        """Emit spans whose wait is over (without content) and forget log records nobody claimed."""
        now = self.clock()
        while self._pending:
            key, (deadline, span) = next(iter(self._pending.items()))
            if deadline > now:
                break
            del self._pending[key]
            self._finish(span, [])
        while self._logs:
            key, (deadline, _) = next(iter(self._logs.items()))
            if deadline > now:
                break
            del self._logs[key]

    def flush(self) -> None:
        """Emit every waiting span now (at shutdown)."""
        while self._pending:
            _, (_, span) = self._pending.popitem(last=False)
            self._finish(span, [])

    @property
    def waiting(self) -> int:
        """Spans waiting for their log records."""
        return len(self._pending)

    # -- internals ---------------------------------------------------------------------------
    @staticmethod
    def _service(item: Any) -> str:
        return str(item.resource.get("service.name", ""))

    @staticmethod
    def _has_content(span: Span) -> bool:
        attrs = span.attributes
        return (
            "gen_ai.input.messages" in attrs
            or "gen_ai.output.messages" in attrs
            or "gen_ai.prompt.0.content" in attrs
            or "gen_ai.completion.0.content" in attrs
            or any(e.name.startswith("gen_ai.") for e in span.events)
        )

    def _finish(self, span: Span, records: list[LogRecord]) -> None:
        try:
            event = span_to_event(span, records, self.service, self.price_for, self.keep_media)
        except Exception as exc:  # noqa: BLE001 - one odd span must not fail the others
            self.stats.invalid_spans += 1
            log.warning(
                "span not turned into an event",
                extra={"trace_id": span.trace_id, "span_id": span.span_id, "error": str(exc)[:500]},
            )
            return
        self.stats.events += 1
        if not event.metadata.get("content_captured"):
            self.stats.events_without_content += 1
        self.emit(event)
