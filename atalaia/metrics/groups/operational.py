"""Operational metrics: latency, tokens, cost and cache hits, read from the event itself."""

from __future__ import annotations

from collections.abc import Sequence

from atalaia.events import InferenceEvent
from atalaia.metrics.groups.base import Chart, Collector, Metric, MetricGroup
from atalaia.metrics.operational import is_unfinished, operational_values, request_cost


class OperationalGroup(MetricGroup):
    """Latency, token counts, cost (a configured price wins) and cache hits."""

    name = "operational"
    needs_text = False  # latency, tokens and cost need no content
    metrics = (
        Metric(
            "latency_ms",
            "ms",
            "lower",
            "end-to-end latency reported by the service "
            "(an error row for an unfinished call: `finish_reason` `error` or `incomplete`)",
        ),
        Metric("prompt_tokens", "tokens", "neither", "tokens of the prompt"),
        Metric("completion_tokens", "tokens", "neither", "tokens of the response"),
        Metric("total_tokens", "tokens", "neither", "prompt plus completion tokens"),
        Metric(
            "cost",
            "USD",
            "lower",
            "cost of the request (0 for a cached answer); `ATALAIA_PRICES` wins over the event's own",
        ),
        Metric("cache_hit", "0/1", "neither", "1 when the answer came from the semantic cache"),
    )
    method = "from the event; `cost` from `ATALAIA_PRICES` when it lists the model version or its family"
    charts = (
        Chart("requests", "Request rate", "req/s", "latency_ms", ("rate",), alert_metrics=("latency_ms",)),
        Chart("latency", "Latency", "ms", "latency_ms", ("p50", "p95", "p99")),
        Chart("cost", "Cost", "USD/h", "cost", ("per_hour",)),
    )

    def score(self, events: Sequence[InferenceEvent], out: Collector) -> None:
        configured = self.settings.configured_price if self.settings.prices else None
        for ev in events:
            values = operational_values(ev)
            price = configured(ev.model_version) if configured is not None else None
            if price is not None:
                # A configured price wins: the emitting service may not know the contract price.
                values["cost"] = request_cost(price, ev.prompt_tokens, ev.completion_tokens, ev.cache_hit)
            for name, value in values.items():
                out.add(ev, name, value)
            if is_unfinished(ev):
                # An error row, not a value: the call counts as a request (rate, count, the
                # stopped-sending alert) but its time to the failure stays out of the percentiles.
                out.add(ev, "latency_ms", error=f"unfinished call (finish_reason {ev.finish_reason})")
