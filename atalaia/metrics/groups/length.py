"""Answer length: words in the response, and its length relative to the reference answer.

A model that starts rambling (ratio well above 1) or truncating (well below 1, or few words
with ``finish_reason: length``) shows it here first, before overlap scores move; it costs a
regular expression per event, so every event is scored.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from atalaia.events import InferenceEvent
from atalaia.metrics.groups.base import Chart, Collector, Metric, MetricGroup

_WORD = re.compile(r"\w+")


def word_count(text: str) -> int:
    """Words (runs of letters, digits or underscores, any script) in ``text``.

    >>> word_count("São 30 dias úteis, não 25."), word_count("  ")
    (6, 0)
    """
    return sum(1 for _ in _WORD.finditer(text))


class LengthGroup(MetricGroup):
    """``response_words`` on every event; ``answer_length_ratio`` where a reference exists."""

    name = "length"
    metrics = (
        Metric("response_words", "words", "neither", "words in the response"),
        Metric(
            "answer_length_ratio",
            "ratio",
            "neither",
            "response words / reference words (1: as long as the reference)",
        ),
    )
    method = "word count (Unicode `\\w+` runs)"
    when = "every event; the ratio on events with a `reference`"
    charts = (Chart("length", "Answer length vs reference", "ratio", "answer_length_ratio", ("mean", "p95")),)

    def score(self, events: Sequence[InferenceEvent], out: Collector) -> None:
        for ev in events:
            words = word_count(ev.response)
            out.add(ev, "response_words", float(words))
            if not ev.reference:
                continue
            reference = word_count(ev.reference)
            if reference == 0:
                out.add(ev, "answer_length_ratio", error="the reference has no words")
            else:
                out.add(ev, "answer_length_ratio", words / reference)
