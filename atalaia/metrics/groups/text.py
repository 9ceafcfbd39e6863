"""Text overlap with the reference answer: ROUGE and BLEU (METEOR is its own group, ``meteor``)."""

from __future__ import annotations

from collections.abc import Sequence

from atalaia.events import InferenceEvent
from atalaia.metrics.groups.base import Chart, Collector, Metric, MetricGroup


class TextGroup(MetricGroup):
    """Overlap of the response with the event's ``reference`` answer (events without one get none)."""

    name = "text"
    #: METEOR costs more than ROUGE and BLEU together, so it is a group of its own that the scoring
    #: budget samples; a worker running ``text`` runs it too (as before the split).
    requires = ("meteor",)
    metrics = (
        Metric("rouge1", "F1", "higher", "unigram overlap with the reference"),
        Metric("rouge2", "F1", "higher", "bigram overlap with the reference"),
        Metric("rougeL", "F1", "higher", "longest common subsequence with the reference"),
        Metric("bleu", "score", "higher", "sacrebleu sentence BLEU against the reference"),
    )
    method = (
        "rouge-score's formulas on Unicode words, stemmer by the pair's language (Porter for English, Snowball"
        " for Portuguese, Spanish, ...), with `labels.language`; sacrebleu (13a English, intl others)"
    )
    when = "events with a `reference`"
    charts = (Chart("rougeL", "ROUGE-L vs reference", "F1", "rougeL", ("mean",)),)
    #: Extra rows of the docs table: the same scores of a corrected answer, from feedback.
    doc_rows = (
        (
            "`text` (feedback)",
            "`correction_rouge1` … `correction_meteor`",
            "the same, response vs the corrected answer",
            "feedback with `corrected_answer`; keyed on the inference event",
        ),
    )

    def warm_up(self) -> None:
        self.models.text  # noqa: B018 - loads the scorer

    def score(self, events: Sequence[InferenceEvent], out: Collector) -> None:
        for ev in events:
            if not ev.reference:
                continue
            labels = None
            try:
                if hasattr(self.models.text, "score_with_language"):
                    # The pair's language (it chose the stemmer) is stored as a label of each score.
                    language, scores = self.models.text.score_with_language(ev.response, ev.reference, meteor=False)
                    labels = {"language": language}
                else:
                    scores = self.models.text.score(ev.response, ev.reference)
                    scores = {k: v for k, v in scores.items() if not k.startswith("meteor")}
            except Exception as exc:  # noqa: BLE001 - e.g. an empty response: recorded, not raised
                out.add(ev, "rougeL", error=f"{type(exc).__name__}: {exc}"[:500])
                continue
            for name, value in scores.items():
                out.add(ev, name, value, labels=labels)
