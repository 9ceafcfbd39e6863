"""A call the gateway relayed, as handed off to become an inference event, and the code that
turns it into one.

The relay loop does as little per call as it can: it keeps what it read on the way through (a
:class:`~gateway.protocols.CallRecord`), the request's bytes, a whole answer's bytes and the
timings, and hands that off (:class:`FinishedCall`, pickled to the event process of
:mod:`gateway.emitter`). Parsing the bodies, pricing, and building and validating the
:class:`~atalaia.events.InferenceEvent` happen there (:class:`EventBuilder`), off the loop that
relays the next call. The event's id and time are fixed at the hand-off, so an event built twice
(a fallback after a child's death) is still one event downstream.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from atalaia.events import InferenceEvent, scrub
from atalaia.metrics.operational import Price
from atalaia.settings import Settings
from gateway import protocols as p

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Upstream:
    """A configured upstream: where calls go, how they are read, and its price list."""

    name: str
    base_url: str
    protocol: str  # openai | anthropic
    provider: str
    prices: dict[str, tuple[float, float]]

    @classmethod
    def from_settings(cls, name: str, spec: dict[str, Any]) -> Upstream:
        """An upstream from ``ATALAIA_GATEWAY_UPSTREAMS`` (validated by the settings)."""
        protocol = str(spec.get("protocol", "openai"))
        prices = {str(k): (float(v[0]), float(v[1])) for k, v in dict(spec.get("prices") or {}).items()}
        return cls(name, str(spec["base_url"]).rstrip("/"), protocol, str(spec.get("provider") or protocol), prices)


def upstreams_of(settings: Settings) -> dict[str, Upstream]:
    """Every upstream of ``settings.gateway_upstreams``, by name."""
    return {name: Upstream.from_settings(name, spec) for name, spec in settings.gateway_upstreams.items()}


@dataclass
class FinishedCall:
    """One answered chat call, as the relay loop hands it off.

    ``response`` is a whole (non-streaming) answer's body, read by :class:`EventBuilder`; a
    stream was read chunk by chunk into ``record`` on the way through, and has ``None``.
    """

    upstream: str
    service: str
    status: int
    record: p.CallRecord
    request: bytes
    response: bytes | None
    latency_ms: float
    time_to_first_token_ms: float | None
    ts: float = field(default_factory=time.time)
    event_id: str = field(default_factory=lambda: uuid.uuid4().hex)


class EventBuilder:
    """``builder(call)``: the inference event of a :class:`FinishedCall`, or None if it cannot be one.

    >>> from atalaia.settings import Settings
    >>> settings = Settings(gateway_upstreams={"claude": {"base_url": "http://x", "protocol": "anthropic"}})
    >>> body = b'{"model": "claude-haiku-4-5", "messages": [{"role": "user", "content": "Hi"}]}'
    >>> answer = b'{"id": "m1", "model": "claude-haiku-4-5", "content": [{"type": "text", "text": "Hello"}],'
    >>> answer += b' "stop_reason": "end_turn", "usage": {"input_tokens": 8, "output_tokens": 2}}'
    >>> record = p.request_record("anthropic", json.loads(body))
    >>> event = EventBuilder(settings)(FinishedCall("claude", "my-app", 200, record, body, answer, 12.5, None))
    >>> event.service, event.provider, event.response, event.prompt_tokens, event.finish_reason
    ('my-app', 'anthropic', 'Hello', 8, 'end_turn')
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.upstreams = upstreams_of(settings)
        self.keep_media = settings.event_keep_media

    def __call__(self, call: FinishedCall) -> InferenceEvent | None:
        upstream = self.upstreams.get(call.upstream)
        if upstream is None:  # the configuration changed between the relay and here
            log.warning("gateway call of an unknown upstream dropped", extra={"upstream": call.upstream[:200]})
            return None
        record = call.record
        try:
            if call.response is not None:
                data = _json(call.response)
                if isinstance(data, dict):
                    (p.openai_response if record.kind == "openai" else p.anthropic_response)(record, data)
            request = _json(call.request)
            messages = p.request_messages(record.kind, request, self.keep_media) if isinstance(request, dict) else []
            # Every caller- or upstream-supplied string is cut to its column's bound: one long
            # header or model name must not cost the event.
            model = _bounded(record.response_model, 200) or _bounded(record.model, 200) or "unknown"
            prompt_price, completion_price = (
                upstream.prices.get(model) or upstream.prices.get(record.model) or self.settings.price_for(model)
            )
            return InferenceEvent(
                event_id=uuid.UUID(call.event_id),
                ts=datetime.fromtimestamp(call.ts, UTC),
                service=_bounded(call.service, 200) or _bounded(upstream.name, 200) or "gateway",
                model_version=model,
                messages=messages,
                # Stream deltas were parsed on the relay loop, unscrubbed: see _json.
                response=scrub("".join(record.text)),
                latency_ms=call.latency_ms,
                prompt_tokens=record.prompt_tokens,
                completion_tokens=record.completion_tokens,
                cost=Price(prompt_price, completion_price).cost(record.prompt_tokens, record.completion_tokens),
                request_id=_bounded(record.response_id, 200),
                provider=_bounded(upstream.provider, 200),
                finish_reason=_finish_reason(record),
                time_to_first_token_ms=call.time_to_first_token_ms,
                metadata=scrub(_metadata(upstream.name, call.status, record)),
            )
        except Exception as exc:  # noqa: BLE001 - one odd answer must not stop the others
            log.warning(
                "gateway call not turned into an event", extra={"upstream": upstream.name, "error": str(exc)[:300]}
            )
            return None


def _bounded(value: Any, limit: int) -> str | None:
    """``value`` as a stripped, storable (:func:`atalaia.events.scrub`) string of at most ``limit``
    characters, or None when empty."""
    if value is None:
        return None
    return scrub(str(value).strip()[:limit]) or None


def _finish_reason(record: p.CallRecord) -> str | None:
    """``error`` for an error the upstream reported inside its answer (as OpenTelemetry ERROR spans
    are recorded), ``incomplete`` for a stream cut off before its end, else the upstream's own."""
    if record.error_type is not None:
        return "error"
    if record.incomplete is not None:
        return "incomplete"
    return _bounded(record.finish_reason, 64)


def _metadata(upstream: str, status: int, record: p.CallRecord) -> dict[str, Any]:
    """The event's ``metadata``: where the call went, and what was odd about it."""
    metadata: dict[str, Any] = {
        "source": "gateway",
        "upstream": upstream,
        "stream": record.stream,
        "status": status,
        "request_model": _bounded(record.model, 200),
    }
    if not record.usage_seen:
        metadata["usage"] = "not reported by the upstream"
    if record.tool_calls:
        metadata["tool_calls"] = record.tool_call_parts()  # the answer is a str: its tool calls live here
    if record.error_type is not None:
        metadata["error_type"] = record.error_type
        metadata["error"] = record.error_message or record.error_type
    if record.incomplete is not None:
        metadata["incomplete"] = record.incomplete
    if (record.error_type is not None or record.incomplete is not None) and record.finish_reason:
        metadata["upstream_finish_reason"] = _bounded(record.finish_reason, 64)
    return metadata


def _json(data: bytes) -> Any:
    # JSON may escape a lone surrogate or a NUL (\ud800, \u0000), which no event can carry: they
    # become U+FFFD, as the OTLP receiver does, rather than cost the event.
    try:
        return scrub(json.loads(data))
    except ValueError:
        return None
