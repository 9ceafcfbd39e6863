"""Operational metrics of one inference event: latency, tokens and cost."""

from __future__ import annotations

from dataclasses import dataclass

from atalaia.events import InferenceEvent, MetricEvent

OPERATIONAL_METRICS = ("latency_ms", "prompt_tokens", "completion_tokens", "total_tokens", "cost", "cache_hit")


@dataclass(frozen=True)
class Price:
    """Price in USD per 1,000 tokens."""

    prompt_per_1k: float
    completion_per_1k: float

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        """Cost of one request.

        >>> Price(0.5, 1.5).cost(1000, 2000)
        3.5
        """
        return (prompt_tokens * self.prompt_per_1k + completion_tokens * self.completion_per_1k) / 1000.0


def request_cost(
    price: tuple[float, float], prompt_tokens: int, completion_tokens: int, cache_hit: bool = False
) -> float:
    """What one request costs at ``price`` (USD per 1,000 prompt and completion tokens).

    The one place the cost of a request is computed, by the inference service when it builds the
    event and by scoring when a configured price overrides the event's own. A cached answer costs
    nothing: no model processed its tokens.

    >>> request_cost((0.5, 1.5), 1000, 2000), request_cost((0.5, 1.5), 1000, 2000, cache_hit=True)
    (3.5, 0.0)
    """
    if cache_hit:
        return 0.0
    return Price(*price).cost(prompt_tokens, completion_tokens)


#: ``finish_reason`` of a call that did not end in an answer: an error inside a 200 answer or
#: stream, or a stream cut off by the caller or the upstream (gateway, OTLP ERROR spans).
UNFINISHED = frozenset({"error", "incomplete"})


def is_unfinished(event: InferenceEvent) -> bool:
    """True when ``event`` records a call that ended without a whole answer (:data:`UNFINISHED`):
    its latency is the time to the failure or the cut, and its text is partial."""
    return event.finish_reason in UNFINISHED


def operational_values(event: InferenceEvent) -> dict[str, float]:
    """Latency, token and cost scores of an event, keyed by metric name.

    An unfinished call (:func:`is_unfinished`) has no latency value: a stream cut off after
    14 ms, or an error answered at once, would pull the latency percentiles of real answers down
    (the operational group records an error row for it instead, so it still counts as a
    request). Its tokens and cost stay, since they were spent.

    >>> from atalaia.events import ChatMessage
    >>> ev = InferenceEvent(service="s", model_version="m", messages=[ChatMessage(role="user", content="q")],
    ...     response="a", latency_ms=120.0, prompt_tokens=10, completion_tokens=5, cost=0.002)
    >>> operational_values(ev)["total_tokens"]
    15.0
    >>> "latency_ms" in operational_values(ev.model_copy(update={"finish_reason": "incomplete"}))
    False
    """
    values = {
        "latency_ms": float(event.latency_ms),
        "prompt_tokens": float(event.prompt_tokens),
        "completion_tokens": float(event.completion_tokens),
        "total_tokens": float(event.prompt_tokens + event.completion_tokens),
        "cost": float(event.cost),
        "cache_hit": 1.0 if event.cache_hit else 0.0,
    }
    if is_unfinished(event):
        del values["latency_ms"]
    return values


def metric_events(
    event: InferenceEvent, values: dict[str, float | None], errors: dict[str, str] | None = None
) -> list[MetricEvent]:
    """Wrap computed values (and per-metric errors) as metric events with deterministic ids."""
    errors = errors or {}
    out = []
    for name in list(values) + [n for n in errors if n not in values]:
        out.append(MetricEvent.of(event, name, values.get(name), errors.get(name)))
    return out
