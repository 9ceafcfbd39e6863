"""Perplexity of the response under the served generator model."""

from __future__ import annotations

from collections.abc import Sequence

from atalaia.events import InferenceEvent
from atalaia.metrics.groups.base import Chart, Collector, Metric, MetricGroup


class PerplexityGroup(MetricGroup):
    """How surprising the response is to the generator (first ``ATALAIA_PERPLEXITY_MAX_TOKENS`` tokens)."""

    name = "perplexity"
    cost = "expensive"
    metrics = (Metric("perplexity", "ppl", "lower", "perplexity of the response under the generator"),)
    method = "SmolLM2"
    when = "sampled"
    charts = (Chart("perplexity", "Perplexity", "ppl", "perplexity", ("p50", "p95")),)

    def warm_up(self) -> None:
        self.models.perplexity  # noqa: B018 - loads the model

    def score(self, events: Sequence[InferenceEvent], out: Collector) -> None:
        chosen = self.chosen(events)
        if not chosen:
            return

        def run() -> None:
            results = self.models.perplexity.score([ev.response for ev in chosen])
            for ev, result in zip(chosen, results, strict=True):
                if isinstance(result, Exception):
                    out.add(ev, "perplexity", error=str(result))
                else:
                    out.add(ev, "perplexity", float(result))

        out.guard(chosen, ["perplexity"], run)
