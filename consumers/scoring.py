"""Scoring a batch of inference events: every enabled metric group, models loaded once per worker.

The groups are plugins (``atalaia/metrics/groups/``, listed in its ``registry``); this module
runs them and holds the models they share, loaded lazily.

Pure with respect to I/O: it takes events (and, for drift, vectors read by the caller) and returns
metric events and embedding rows. A metric that fails on one event becomes an error row for that
event and metric; it never fails the batch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from atalaia.events import ChatMessage, InferenceEvent
from atalaia.metrics.budget import ScoringBudget
from atalaia.metrics.groups.base import (
    Collector,
    MetricGroup,
    ScoredBatch,
    has_content,
    last_user_message,
    sampled,
)
from atalaia.metrics.groups.registry import GROUPS, GROUPS_BY_NAME
from atalaia.metrics.operational import is_unfinished
from atalaia.settings import Settings
from consumers.gc_pauses import collector_cpu_seconds

log = logging.getLogger(__name__)

#: Metrics read from one side of the exchange (the last user message, the response). On an empty
#: side they measure nothing: the toxicity of '' is a constant of the model (0.036), a cosine to
#: the embedding of '' is noise. An event with that side empty or blank (no user message, a
#: tool-call answer with response '') gets no row for them, value or error. Metrics that already
#: record an empty text as an error (ROUGE, BLEU, METEOR, perplexity) or count it (words) keep it.
TEXT_SIDES: dict[str, tuple[str, ...]] = {
    "toxicity_prompt": ("prompt",),
    "toxicity_response": ("response",),
    "similarity_prompt": ("prompt", "response"),
    "similarity_reference": ("response",),
    "similarity_context": ("response",),
}
#: Metrics of the answer's quality or length: none for an unfinished call (an error inside a 200
#: answer, a stream cut off), whose response is partial. (An empty answer of a finished call keeps
#: them: that the model said nothing is itself a score.)
ANSWER_METRICS = frozenset(
    m.name for group in ("text", "meteor", "perplexity", "length") for m in GROUPS_BY_NAME[group].metrics
)


__all__ = ["BatchScorer", "ScoredBatch", "has_content", "last_user_message", "sampled"]


class BatchScorer:
    """Computes every enabled metric group for batches of inference events.

    Models are loaded lazily, once, on first use (a worker that scores only cheap metrics never
    loads them). Pass ready-made components to share or fake them.
    """

    def __init__(
        self,
        settings: Settings,
        embedder: Any = None,
        toxicity: Any = None,
        text: Any = None,
        perplexity: Any = None,
    ) -> None:
        self.settings = settings
        self.groups = settings.enabled_groups
        self._embedder, self._toxicity, self._text, self._perplexity = embedder, toxicity, text, perplexity
        self._versions: Any = None  # atalaia.metrics.perplexity.VersionedPerplexity, made on first use
        # The registry's groups this worker runs: the enabled ones and those they require.
        wanted = set(self.groups)
        for name in self.groups:
            wanted.update(getattr(GROUPS_BY_NAME[name], "requires", ()))
        self.active: list[MetricGroup] = [g(settings, self) for g in GROUPS if g.name in wanted]
        #: Each group's measured cost and the incoming rate decide the expensive groups' fractions.
        self.budget = ScoringBudget(settings.scoring_budget, [g.name for g in self.active if g.cost == "expensive"])

    # -- lazily loaded components ------------------------------------------------------------
    @property
    def embedder(self) -> Any:
        if self._embedder is None:
            from atalaia.metrics.embedding import Embedder
            from atalaia.models.embedder import load_embedder

            self._embedder = Embedder(load_embedder(self.settings))
        return self._embedder

    @property
    def toxicity(self) -> Any:
        if self._toxicity is None:
            from atalaia.metrics.toxicity import build_toxicity_scorer

            self._toxicity = build_toxicity_scorer(self.settings)
        return self._toxicity

    @property
    def text(self) -> Any:
        if self._text is None:
            from atalaia.metrics.text import TextOverlapScorer

            self._text = TextOverlapScorer(
                self.settings.nltk_data,
                language=self.settings.text_language,
                fallback_language=self.settings.text_fallback_language,
            )
        return self._text

    @property
    def perplexity(self) -> Any:
        """The perplexity scorer of the configured base version (``ATALAIA_MODEL_VERSION``)."""
        return self.perplexity_for(self.settings.model_version)

    def perplexity_for(self, version: str) -> Any | None:
        """The perplexity scorer of model ``version`` (its registry folder), ``None`` when not hosted.

        A scorer handed to the constructor serves every version (tests, benches).
        """
        if self._perplexity is not None:
            return self._perplexity
        if self._versions is None:
            from atalaia.metrics.perplexity import VersionedPerplexity

            self._versions = VersionedPerplexity(self.settings)
        return self._versions.scorer(version)

    def warm_up(self) -> None:
        """Load every model the enabled groups need (so the first batch is not slow), and
        measure each group's cost on a sample event, so the budget knows it from the start."""
        for group in self.active:
            group.warm_up()
        sample = InferenceEvent(
            service="warm-up",
            # The served base version: perplexity scores only versions Atalaia hosts, and a
            # sample it skipped would measure its cost as nothing (the first batch unsampled).
            model_version=self.settings.model_version,
            messages=[ChatMessage(role="user", content="How many vacation days do I have this year?")],
            response="You have 30 working days of paid vacation per year.",
            reference="Employees have 30 working days of vacation.",
            latency_ms=1.0,
            prompt_tokens=10,
            completion_tokens=12,
            cost=0.0,
        )
        for _ in range(2):  # the first call pays one-off costs (lazy imports, allocations)
            costs = {}
            for group in self.active:
                started, in_gc = time.process_time(), collector_cpu_seconds()
                group.score([sample], Collector(ScoredBatch()))
                # One event's cost: a collection that struck during it would be taken for it.
                costs[group.name] = time.process_time() - started - (collector_cpu_seconds() - in_gc)
        for name, cpu_s in costs.items():
            if name != "drift":  # drift's work is the embedding group's (see atalaia/metrics/groups/drift.py)
                self.budget.observe(name, cpu_s, 1)

    def fraction(self, name: str) -> float:
        """The share of events the group ``name`` scores now (drift: the share of prompts embedded)."""
        if name == "drift":
            name = "embedding"
        for group in self.active:
            if group.name == name:
                return group.rate()
        return 1.0

    # -- scoring -----------------------------------------------------------------------------
    def score(self, events: Sequence[InferenceEvent]) -> ScoredBatch:
        """Score a batch; every (event, metric) gets a value or an error, never an exception."""
        batch = ScoredBatch()
        out = Collector(batch)
        if events:
            times = [ev.ts.timestamp() for ev in events]
            self.budget.update(len(events), max(times), time.time(), oldest_ts=min(times))
        # Groups that read text score only events with text (no content captured: operational only).
        sides = {str(ev.event_id): text_sides(ev) for ev in events}
        with_text = [ev for ev in events if sides[str(ev.event_id)]["prompt"] or sides[str(ev.event_id)]["response"]]
        # Only events missing a side (or unfinished) can lose rows: most batches have none, and
        # then no group's rows are walked again.
        partial = {k: v for k, v in sides.items() if v["unfinished"] or not (v["prompt"] and v["response"])}
        for group in self.active:
            out.fraction = group.rate()
            n_metrics, n_vectors = len(batch.metrics), len(batch.embeddings)
            started, wall, in_gc = time.process_time(), time.perf_counter(), collector_cpu_seconds()
            group.score(with_text if group.needs_text else events, out)
            gc_s = collector_cpu_seconds() - in_gc
            cpu_s, wall = time.process_time() - started - gc_s, time.perf_counter() - wall
            self.budget.pause(gc_s)  # the heap's cost, not the group's (see ScoringBudget.pause)
            scored = {str(m.source_event_id) for m in batch.metrics[n_metrics:]}
            scored.update(v["event_id"] for v in batch.embeddings[n_vectors:])
            batch.groups[group.name] = (round(wall, 4), len(scored))
            if partial:
                _drop_empty_sides(batch, n_metrics, n_vectors, partial)
            # Cost per scored event: what one more sampled event would cost.
            self.budget.observe(group.name, cpu_s, len(scored))
        out.fraction = 1.0
        return batch


def text_sides(event: InferenceEvent) -> dict[str, bool]:
    """Which sides of ``event`` carry text to score: ``prompt`` (its last user message) and
    ``response``; blank text (only whitespace) counts as none, and so does the partial response
    of an unfinished call (an error or a cut-off stream, :func:`atalaia.metrics.operational.is_unfinished`).

    >>> ev = InferenceEvent(service="s", model_version="m", messages=[], response=" ", latency_ms=1,
    ...     prompt_tokens=0, completion_tokens=0, cost=0)
    >>> text_sides(ev)
    {'prompt': False, 'response': False, 'unfinished': False}
    """
    unfinished = is_unfinished(event)
    response = bool(event.response.strip()) and not unfinished
    return {"prompt": bool(last_user_message(event).strip()), "response": response, "unfinished": unfinished}


def _drop_empty_sides(batch: ScoredBatch, n_metrics: int, n_vectors: int, sides: dict[str, dict[str, bool]]) -> None:
    """Remove the rows a group just added (from ``n_metrics`` / ``n_vectors`` on) that measure an
    empty side of their event (:data:`TEXT_SIDES`; embeddings by their ``kind``; ``sides`` is
    keyed by the event id as text, as embedding rows hold it; events not in it keep every row),
    so a meaningless value reaches neither the tables, the metrics topic nor the drift reference."""
    metrics = batch.metrics
    metrics[n_metrics:] = [
        m
        for m in metrics[n_metrics:]
        if all(sides.get(str(m.source_event_id), {}).get(side, True) for side in TEXT_SIDES.get(m.name, ()))
        and not (m.name in ANSWER_METRICS and sides.get(str(m.source_event_id), {}).get("unfinished", False))
    ]
    vectors = batch.embeddings
    vectors[n_vectors:] = [v for v in vectors[n_vectors:] if sides.get(v["event_id"], {}).get(str(v.get("kind")), True)]
