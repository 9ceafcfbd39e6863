"""Toxicity of the prompt and of the response."""

from __future__ import annotations

from collections.abc import Sequence

from atalaia.events import InferenceEvent
from atalaia.metrics.groups.base import Chart, Collector, Metric, MetricGroup, last_user_message


class ToxicityGroup(MetricGroup):
    """Probability that the prompt / the response is toxic, with ``labels.backend``."""

    name = "toxicity"
    cost = "expensive"
    metrics = (
        Metric("toxicity_prompt", "probability", "lower", "toxicity of the last user message"),
        Metric("toxicity_response", "probability", "lower", "toxicity of the response"),
    )
    method = "Detoxify from a local checkpoint, or the offline default; with `labels.backend`"
    when = "sampled"
    charts = (
        Chart(
            "toxicity",
            "Toxicity of responses",
            "score",
            "toxicity_response",
            ("mean", "p95"),
            alert_metrics=("toxicity_response", "toxicity_prompt"),
        ),
    )

    def warm_up(self) -> None:
        self.models.toxicity  # noqa: B018 - loads the model

    def score(self, events: Sequence[InferenceEvent], out: Collector) -> None:
        chosen = self.chosen(events)
        if not chosen:
            return

        def run() -> None:
            scorer = self.models.toxicity
            texts = [last_user_message(ev) for ev in chosen] + [ev.response for ev in chosen]
            scores = scorer.score(texts)
            labels = {"backend": scorer.backend}
            for i, ev in enumerate(chosen):
                out.add(ev, "toxicity_prompt", float(scores[i]), labels=labels)
                out.add(ev, "toxicity_response", float(scores[len(chosen) + i]), labels=labels)

        out.guard(chosen, ["toxicity_prompt", "toxicity_response"], run)
