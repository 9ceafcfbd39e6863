"""Scoring a batch of inference events: every metric group, models loaded once per worker.

Pure with respect to I/O: it takes events (and, for drift, vectors read by the caller) and returns
metric events and embedding rows. A metric that fails on one event becomes an error row for that
event and metric; it never fails the batch.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from atalaia.events import InferenceEvent, MetricEvent
from atalaia.metrics.operational import Price, operational_values
from atalaia.settings import Settings

log = logging.getLogger(__name__)


def sampled(event_id: Any, group: str, rate: float) -> bool:
    """Deterministic sampling: the same event is always in or out, so a redelivery agrees.

    >>> import uuid
    >>> sampled(uuid.UUID(int=7), "perplexity", 1.0), sampled(uuid.UUID(int=7), "perplexity", 0.0)
    (True, False)
    """
    if rate >= 1.0:
        return True
    if rate <= 0.0:
        return False
    digest = hashlib.blake2b(f"{event_id}:{group}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < rate


#: Retrieved passages whose embedding is kept (insertion order: the oldest is dropped first).
PASSAGE_CACHE_SIZE = 10_000


def _passage_key(passage_id: str, text: str) -> str:
    return hashlib.blake2b(f"{passage_id}\0{text}".encode(), digest_size=16).hexdigest()


def last_user_message(event: InferenceEvent) -> str:
    """The prompt as the user wrote it: the last user message (system prompts are the same for all)."""
    for message in reversed(event.messages):
        if message.role == "user":
            return message.text
    return event.messages[-1].text if event.messages else ""


def has_content(event: InferenceEvent) -> bool:
    """Whether the event carries text to score: an OpenTelemetry span recorded without content
    capture has neither messages nor response, and gets operational metrics only."""
    return bool(event.response) or any(m.text for m in event.messages)


@dataclass
class ScoredBatch:
    """What scoring a batch produced."""

    metrics: list[MetricEvent] = field(default_factory=list)
    embeddings: list[dict[str, Any]] = field(default_factory=list)


class _Collector:
    def __init__(self, events: Sequence[InferenceEvent]) -> None:
        self.out: list[MetricEvent] = []
        self.events = {e.event_id: e for e in events}

    def add(
        self,
        event: InferenceEvent,
        name: str,
        value: float | None = None,
        error: str | None = None,
        labels: dict[str, str] | None = None,
    ) -> None:
        if value is not None and not np.isfinite(value):
            value, error = None, error or f"non-finite value {value}"
        self.out.append(MetricEvent.of(event, name, value, error, labels))

    def guard(self, events: Sequence[InferenceEvent], names: Sequence[str], fn: Callable[[], None]) -> None:
        """Run a whole-batch computation; if it fails, every event gets an error row per name."""
        try:
            fn()
        except Exception as exc:
            log.exception("metric group failed on a batch", extra={"metrics": list(names)})
            for event in events:
                for name in names:
                    self.add(event, name, error=f"{type(exc).__name__}: {exc}"[:500])


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
        self._passage_vectors: dict[str, np.ndarray] = {}

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
        if self._perplexity is None:
            from atalaia.metrics.perplexity import PerplexityScorer
            from atalaia.models.generator import Generator

            gen = Generator.load(self.settings.generator_path, threads=self.settings.torch_threads)
            self._perplexity = PerplexityScorer(gen.model, gen.tokenizer, self.settings.perplexity_max_tokens)
        return self._perplexity

    def warm_up(self) -> None:
        """Load every model the enabled groups need (so the first batch is not slow)."""
        for group, attr in (
            ("embedding", "embedder"),
            ("drift", "embedder"),
            ("toxicity", "toxicity"),
            ("text", "text"),
            ("perplexity", "perplexity"),
        ):
            if group in self.groups:
                getattr(self, attr)

    def _rate(self, group: str) -> float:
        return self.settings.sample_rates.get(group, 1.0)

    # -- scoring -----------------------------------------------------------------------------
    def score(self, events: Sequence[InferenceEvent]) -> ScoredBatch:
        """Score a batch; every (event, metric) gets a value or an error, never an exception."""
        c = _Collector(events)
        batch = ScoredBatch()
        # Text-based groups score only events with text (no content captured: operational only).
        all_events, events = events, [ev for ev in events if has_content(ev)]
        if "operational" in self.groups:
            for ev in all_events:
                values = operational_values(ev)
                if ev.model_version in self.settings.prices:
                    # A configured price wins: the emitting service may not know the contract price.
                    values["cost"] = Price(*self.settings.prices[ev.model_version]).cost(
                        ev.prompt_tokens, ev.completion_tokens
                    )
                for name, value in values.items():
                    c.add(ev, name, value)
        if "text" in self.groups:
            self._score_text(c, events)
        if self.groups & {"embedding", "drift"}:
            self._score_embeddings(c, batch, events)
        if "toxicity" in self.groups:
            self._score_toxicity(c, events)
        if "perplexity" in self.groups:
            self._score_perplexity(c, events)
        batch.metrics = c.out
        return batch

    def _score_text(self, c: _Collector, events: Sequence[InferenceEvent]) -> None:
        for ev in events:
            if not ev.reference:
                continue
            labels = None
            try:
                if hasattr(self.text, "score_with_language"):
                    # The pair's language (it chose the stemmer) is stored as a label of each score.
                    language, scores = self.text.score_with_language(ev.response, ev.reference)
                    labels = {"language": language}
                else:
                    scores = self.text.score(ev.response, ev.reference)
            except Exception as exc:  # noqa: BLE001
                c.add(ev, "rougeL", error=f"{type(exc).__name__}: {exc}"[:500])
                continue
            for name, value in scores.items():
                c.add(ev, name, value, labels=labels)

    def _score_embeddings(self, c: _Collector, batch: ScoredBatch, events: Sequence[InferenceEvent]) -> None:
        chosen = [
            ev for ev in events if "drift" in self.groups or sampled(ev.event_id, "embedding", self._rate("embedding"))
        ]
        if not chosen:
            return

        def run() -> None:
            # One encode call per batch: the model is far faster on one big batch than on many small.
            texts: list[str] = []
            spans: list[tuple[int, int]] = []  # index of the prompt, of the reference (-1: none)
            passages: dict[str, str] = {}
            for ev in chosen:
                start = len(texts)
                texts += [last_user_message(ev), ev.response or " "]
                ref = -1
                if ev.reference:
                    ref = len(texts)
                    texts.append(ev.reference)
                spans.append((start, ref))
                for p in ev.context:
                    key = _passage_key(p.id, p.text)
                    if key not in self._passage_vectors:
                        passages[key] = p.text or p.id
            # One encode call per batch (the model is much faster on one big batch than on many
            # small ones); retrieved passages come from a fixed corpus, so each is embedded once.
            vectors = self.embedder.encode(texts + list(passages.values()))
            for i, key in enumerate(passages):
                self._passage_vectors[key] = vectors[len(texts) + i]
            while len(self._passage_vectors) > PASSAGE_CACHE_SIZE:
                self._passage_vectors.pop(next(iter(self._passage_vectors)))
            for ev, (start, ref) in zip(chosen, spans, strict=True):
                prompt, response = vectors[start], vectors[start + 1]
                for kind, vec in (("prompt", prompt), ("response", response)):
                    batch.embeddings.append(
                        {
                            "event_id": str(ev.event_id),
                            "kind": kind,
                            "model_version": ev.model_version,
                            "ts": ev.ts,
                            "dim": int(vec.shape[0]),
                            "vector": vec.astype(np.float32).tobytes(),
                        }
                    )
                if "embedding" not in self.groups:
                    continue
                if ref >= 0:
                    c.add(ev, "similarity_reference", float(np.dot(response, vectors[ref])))
                if ev.context:
                    ctx = np.stack([self._passage_vectors[_passage_key(p.id, p.text)] for p in ev.context])
                    c.add(ev, "similarity_context", float(np.max(ctx @ response)))
                c.add(ev, "similarity_prompt", float(np.dot(response, prompt)))

        c.guard(chosen, ["similarity_prompt"], run)

    def _score_toxicity(self, c: _Collector, events: Sequence[InferenceEvent]) -> None:
        chosen = [ev for ev in events if sampled(ev.event_id, "toxicity", self._rate("toxicity"))]
        if not chosen:
            return

        def run() -> None:
            from atalaia.metrics.language import toxicity_languages, uncovered_language

            scorer = self.toxicity
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
                        c.add(ev, name, float(scored[j]), labels=labels)
                    else:
                        c.add(
                            ev,
                            name,
                            error=f"language {lang!r} not covered by toxicity backend {scorer.backend!r}",
                            labels={**labels, "language": lang},
                        )

        c.guard(chosen, ["toxicity_prompt", "toxicity_response"], run)

    def _score_perplexity(self, c: _Collector, events: Sequence[InferenceEvent]) -> None:
        chosen = [ev for ev in events if sampled(ev.event_id, "perplexity", self._rate("perplexity"))]
        if not chosen:
            return

        def run() -> None:
            results = self.perplexity.score([ev.response for ev in chosen])
            for ev, result in zip(chosen, results, strict=True):
                if isinstance(result, Exception):
                    c.add(ev, "perplexity", error=str(result))
                else:
                    c.add(ev, "perplexity", float(result))

        c.guard(chosen, ["perplexity"], run)
