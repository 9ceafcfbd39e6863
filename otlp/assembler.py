"""Joining GenAI spans with the log records that carry their content, then emitting events.

Instrumentations on the older conventions (and the current ones in ``event_only`` mode) send a
call's messages as log records (``/v1/logs``), apart from its span (``/v1/traces``), each on its
own export schedule, in either order. Records that arrive first wait (keyed by trace and span
id) for their span. A chat span without content waits up to ``wait_s`` for its records, whatever
its service: a short-lived script flushes its spans before its logs, and the receiver cannot
know whether a service it has not heard from yet (a new app, or any app after a restart) sends
records. Records that arrive for a waiting span join it, and the span goes as soon as one of them
carries the call's output (all the call's records are in by then); otherwise it goes, with what
it has, when its wait is over. So an app without content capture adds at most ``wait_s`` of
delay, and a span is never lost nor held longer. Records that come after their span was emitted
are counted (``late_log_records``) and dropped instead of waiting for a span that has gone.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from atalaia.events import InferenceEvent
from otlp.decode import LogRecord, Span
from otlp.genai import OUTPUT_EVENTS, is_chat_span, span_to_event

log = logging.getLogger(__name__)

#: How long log records wait for their span, and how many may wait.
LOG_TTL_S = 120.0
MAX_WAITING_LOGS = 100_000
MAX_PENDING_SPANS = 100_000
#: Records kept for one span (a long conversation sends one per message); memory stays bounded.
MAX_RECORDS_PER_SPAN = 2_000
#: Emitted spans remembered for ``LOG_TTL_S``, so that their late records are dropped at once.
MAX_DONE_SPANS = 100_000


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
    late_log_records: int = 0


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
        self._pending: OrderedDict[tuple[str, str], tuple[float, Span, list[LogRecord]]] = OrderedDict()
        self._done: OrderedDict[tuple[str, str], float] = OrderedDict()

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
            records = waiting[1] if waiting is not None else []
            # An exporter retry of a span still waiting: it keeps the records that already joined
            # it (the prompt's may have come before the retry) and its first deadline (wait once).
            previous = self._pending.pop(key, None)
            if previous is not None:
                records = (previous[2] + records)[:MAX_RECORDS_PER_SPAN]
            if self.wait_s > 0 and not self._has_content(span) and not self._has_output(records):
                # No content yet: it may still come in log records, of any service (see the module doc).
                deadline = previous[0] if previous is not None else now + self.wait_s
                self._pending[key] = (deadline, span, records)
                while len(self._pending) > MAX_PENDING_SPANS:
                    _, (_, oldest, found) = self._pending.popitem(last=False)
                    self._finish(oldest, found)
            else:
                self._finish(span, records)

    def add_logs(self, records: list[LogRecord], skipped: int) -> None:
        """GenAI log records of one export request."""
        self.stats.log_records += len(records)
        now = self.clock()
        ready: list[tuple[str, str]] = []
        for record in records:
            key = (record.trace_id, record.span_id)
            pending = self._pending.get(key)
            if pending is not None:
                if len(pending[2]) < MAX_RECORDS_PER_SPAN:
                    pending[2].append(record)
                if record.event_name in OUTPUT_EVENTS and key not in ready:
                    ready.append(key)
                continue
            if key in self._done:
                self.stats.late_log_records += 1  # its span has gone (without them, unless it had content)
                continue
            entry = self._logs.get(key)
            if entry is None:
                self._logs[key] = (now + LOG_TTL_S, [record])
            elif len(entry[1]) < MAX_RECORDS_PER_SPAN:
                entry[1].append(record)
        while len(self._logs) > MAX_WAITING_LOGS:
            self._logs.popitem(last=False)
        # After the whole request: the output record may come before the prompt's in one batch.
        for key in ready:
            _, span, found = self._pending.pop(key)
            self._finish(span, found)

    def expire(self) -> None:
        """Emit spans whose wait is over (with the records they have) and forget old records and ids."""
        now = self.clock()
        while self._pending:
            key, (deadline, span, found) = next(iter(self._pending.items()))
            if deadline > now:
                break
            del self._pending[key]
            self._finish(span, found)
        while self._logs:
            key, (deadline, _) = next(iter(self._logs.items()))
            if deadline > now:
                break
            del self._logs[key]
        while self._done:
            key, deadline = next(iter(self._done.items()))
            if deadline > now:
                break
            del self._done[key]

    def flush(self) -> None:
        """Emit every waiting span now (at shutdown)."""
        while self._pending:
            _, (_, span, found) = self._pending.popitem(last=False)
            self._finish(span, found)

    @property
    def waiting(self) -> int:
        """Spans waiting for their log records."""
        return len(self._pending)

    # -- internals ---------------------------------------------------------------------------
    @staticmethod
    def _has_output(records: list[LogRecord]) -> bool:
        return any(r.event_name in OUTPUT_EVENTS for r in records)

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
        key = (span.trace_id, span.span_id)
        self._done.pop(key, None)
        self._done[key] = self.clock() + LOG_TTL_S
        while len(self._done) > MAX_DONE_SPANS:
            self._done.popitem(last=False)
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
