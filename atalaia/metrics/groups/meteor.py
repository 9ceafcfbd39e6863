"""METEOR of the response against the reference answer: the text group's costly half."""

from __future__ import annotations

from collections.abc import Sequence

from atalaia.events import InferenceEvent
from atalaia.metrics.groups.base import Collector, Metric, MetricGroup


class MeteorGroup(MetricGroup):
    """METEOR of the response against the event's ``reference``, sampled by the scoring budget.

    NLTK's METEOR costs about 0.8 ms per pair on a core, more than ROUGE and BLEU together, so
    it is expensive: the worker scores it on the share of events its budget affords, with the
    fraction stored on each row (``text``, which needs it, turns it on).
    """

    name = "meteor"
    cost = "expensive"
    metrics = (
        Metric("meteor", "score", "higher", "METEOR with WordNet synonyms (`meteor_exact` without WordNet)"),
        Metric("meteor_exact", "score", "higher", "METEOR on exact and stem matches only"),
    )
    method = "NLTK METEOR with the pair's stemmer (`meteor_exact` without WordNet and for non-English pairs)"
    when = "events with a `reference` (sampled)"

    def warm_up(self) -> None:
        self.models.text  # noqa: B018 - loads the scorer (and WordNet)

    def score(self, events: Sequence[InferenceEvent], out: Collector) -> None:
        scorer = self.models.text
        for ev in self.chosen([ev for ev in events if ev.reference]):
            assert ev.reference is not None
            try:
                if hasattr(scorer, "meteor_with_language"):
                    language, name, value = scorer.meteor_with_language(ev.response, ev.reference)
                    out.add(ev, name, value, labels={"language": language})
                else:  # a scorer with only score(): take its METEOR
                    for key, value in scorer.score(ev.response, ev.reference).items():
                        if key.startswith("meteor"):
                            out.add(ev, key, value)
            except Exception as exc:  # noqa: BLE001 - e.g. an empty response: recorded, not raised
                name = str(getattr(scorer, "meteor_name", "meteor_exact"))  # the English pairs' variant
                out.add(ev, name, error=f"{type(exc).__name__}: {exc}"[:500])
