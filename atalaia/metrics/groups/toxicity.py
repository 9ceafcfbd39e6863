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
    method = (
        "Detoxify from a local checkpoint, or the offline default (English); with `labels.backend`; a text in a"
        " language the backend does not cover gets an error row with `labels.language` instead of a score"
    )
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
            from atalaia.metrics.language import toxicity_languages, uncovered_language

            scorer = self.models.toxicity
            texts = [last_user_message(ev) for ev in chosen] + [ev.response for ev in chosen]
            # A text in a language the model was not trained on is not scored (a low score would
            # read as "clean"): it gets an error row labelled with its language instead.
            covered = toxicity_languages(scorer.backend)
            outside = [uncovered_language(t, covered) for t in texts]
            inside = [j for j, lang in enumerate(outside) if lang is None]
            scored = dict(zip(inside, scorer.score([texts[j] for j in inside]), strict=True))
            labels = {"backend": scorer.backend}
            for i, ev in enumerate(chosen):
                for name, j in (("toxicity_prompt", i), ("toxicity_response", len(chosen) + i)):
                    lang = outside[j]
                    if lang is None:
                        out.add(ev, name, float(scored[j]), labels=labels)
                    else:
                        out.add(
                            ev,
                            name,
                            error=f"language {lang!r} not covered by toxicity backend {scorer.backend!r}",
                            labels={**labels, "language": lang},
                        )

        out.guard(chosen, ["toxicity_prompt", "toxicity_response"], run)
