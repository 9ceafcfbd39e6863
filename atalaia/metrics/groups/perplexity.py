"""Perplexity of the response under the model version that produced it (the registry's folder)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from atalaia.events import ATALAIA_PROVIDER, InferenceEvent
from atalaia.metrics.groups.base import Chart, Collector, Metric, MetricGroup

log = logging.getLogger(__name__)


class PerplexityGroup(MetricGroup):
    """How surprising the response is to the model version that wrote it (``event.model_version``,
    its folder from the registry; first ``ATALAIA_PERPLEXITY_MAX_TOKENS`` tokens). Versions the
    registry does not know get no perplexity: it would describe another model."""

    name = "perplexity"
    cost = "expensive"
    metrics = (Metric("perplexity", "ppl", "lower", "perplexity of the response under the version that produced it"),)
    method = "SmolLM2 (the event's model version)"
    when = "sampled; only answers of model versions Atalaia hosts (`provider` empty or `atalaia`, in the registry)"
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
        by_version: dict[str, list[InferenceEvent]] = {}
        for ev in chosen:
            by_version.setdefault(ev.model_version, []).append(ev)
        for version, group in by_version.items():
            self._score_version(version, group, out)

    def _score_version(self, version: str, events: list[InferenceEvent], out: Collector) -> None:
        """Score ``events`` (all produced by ``version``) under that version's own model."""
        found: list[Any] = []

        def run() -> None:
            scorer = self.models.perplexity_for(version)
            if scorer is None:  # a version the registry does not know: Atalaia does not host it
                found.append(None)
                return
            results = scorer.score([ev.response for ev in events])
            for ev, result in zip(events, results, strict=True):
                if isinstance(result, Exception):
                    out.add(ev, "perplexity", error=str(result))
                else:
                    out.add(ev, "perplexity", float(result))

        out.guard(events, ["perplexity"], run)
        if found:
            log.debug("no perplexity: model version not in the registry", extra={"model_version": version})
