"""Perplexity of the response under the served generator model."""

from __future__ import annotations

from collections.abc import Sequence

from atalaia.events import ATALAIA_PROVIDER, InferenceEvent
from atalaia.metrics.groups.base import Chart, Collector, Metric, MetricGroup


class PerplexityGroup(MetricGroup):
    """How surprising the response is to the generator (first ``ATALAIA_PERPLEXITY_MAX_TOKENS`` tokens)."""

    name = "perplexity"
    cost = "expensive"
    metrics = (Metric("perplexity", "ppl", "lower", "perplexity of the response under the generator"),)
    method = "SmolLM2"
    when = "sampled; only answers of models Atalaia hosts (`provider` empty or `atalaia`)"
    charts = (Chart("perplexity", "Perplexity", "ppl", "perplexity", ("p50", "p95")),)

    def warm_up(self) -> None:
        self.models.perplexity  # noqa: B018 - loads the model

    @staticmethod
    def hosted(event: InferenceEvent) -> bool:
        """Whether Atalaia hosts the model that produced ``event`` (its perplexity then means something).

        An answer of a hosted provider's model (through the gateway or OpenTelemetry) is not scored:
        its perplexity under SmolLM2 would describe SmolLM2, not the model that wrote it.

        >>> ev = dict(service="s", model_version="m", messages=[], response="x", latency_ms=1,
        ...           prompt_tokens=1, completion_tokens=1, cost=0)
        >>> [PerplexityGroup.hosted(InferenceEvent(**ev, provider=p)) for p in (None, "atalaia", "openai")]
        [True, True, False]
        """
        return event.provider in (None, ATALAIA_PROVIDER)

    def score(self, events: Sequence[InferenceEvent], out: Collector) -> None:
        chosen = [ev for ev in self.chosen(events) if self.hosted(ev)]
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
