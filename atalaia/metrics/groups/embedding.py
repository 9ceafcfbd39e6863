"""Semantic similarity of the response to the reference, the retrieved passages and the prompt."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from atalaia.events import InferenceEvent
from atalaia.metrics.budget import TimeStratifiedSampler
from atalaia.metrics.groups.base import Collector, Metric, MetricGroup, last_user_message

#: Retrieved passages whose embedding is kept (insertion order: the oldest is dropped first).
PASSAGE_CACHE_SIZE = 10_000


def _passage_key(passage_id: str, text: str) -> str:
    return hashlib.blake2b(f"{passage_id}\0{text}".encode(), digest_size=16).hexdigest()


class EmbeddingGroup(MetricGroup):
    """Cosine similarities of sentence embeddings; also stores the prompt and response vectors
    (``embeddings`` table) that the drift group tests."""

    name = "embedding"
    cost = "expensive"
    metrics = (
        Metric("similarity_reference", "cosine", "higher", "response vs the reference answer"),
        Metric(
            "similarity_context",
            "cosine",
            "higher",
            "response vs the closest retrieved passage (a groundedness signal)",
        ),
        Metric("similarity_prompt", "cosine", "higher", "response vs the prompt (relevance)"),
    )
    method = "all-MiniLM-L6-v2 cosine"
    when = "sampled (scoring budget, `ATALAIA_SAMPLE_RATES`); with `drift` on, a time-stratified sample"

    def __init__(self, settings, models) -> None:  # type: ignore[no-untyped-def]
        super().__init__(settings, models)
        self._passage_vectors: dict[str, np.ndarray] = {}
        self._sampler = TimeStratifiedSampler()

    def warm_up(self) -> None:
        self.models.embedder  # noqa: B018 - loads the model

    def stratified(self, events: Sequence[InferenceEvent]) -> list[InferenceEvent]:
        """A time-stratified sample of ``events`` at this group's fraction (see
        :class:`atalaia.metrics.budget.TimeStratifiedSampler`); every event while the fraction is 1."""
        fraction = self.rate()
        if fraction >= 1.0:
            return list(events)
        budget = getattr(self.models, "budget", None)
        rate = budget.rate if budget is not None else None
        return [
            ev
            for ev in sorted(events, key=lambda e: e.ts)
            if self._sampler.take(ev.model_version, ev.ts.timestamp(), fraction, rate)
        ]

    def score(self, events: Sequence[InferenceEvent], out: Collector) -> None:
        groups = self.settings.enabled_groups
        if "drift" in groups:
            # Drift tests the stored prompt vectors: its sample is spread evenly over event time.
            chosen = self.stratified(events)
        else:
            chosen = self.chosen(events)
        if not chosen:
            return
        similarities = self.name in groups

        def run() -> None:
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
            vectors = self.models.embedder.encode(texts + list(passages.values()))
            for i, key in enumerate(passages):
                self._passage_vectors[key] = vectors[len(texts) + i]
            while len(self._passage_vectors) > PASSAGE_CACHE_SIZE:
                self._passage_vectors.pop(next(iter(self._passage_vectors)))
            for ev, (start, ref) in zip(chosen, spans, strict=True):
                prompt, response = vectors[start], vectors[start + 1]
                for kind, vec in (("prompt", prompt), ("response", response)):
                    out.batch.embeddings.append(
                        {
                            "event_id": str(ev.event_id),
                            "kind": kind,
                            "model_version": ev.model_version,
                            "ts": ev.ts,
                            "dim": int(vec.shape[0]),
                            "vector": vec.astype(np.float32).tobytes(),
                        }
                    )
                if not similarities:
                    continue
                if ref >= 0:
                    out.add(ev, "similarity_reference", float(np.dot(response, vectors[ref])))
                if ev.context:
                    ctx = np.stack([self._passage_vectors[_passage_key(p.id, p.text)] for p in ev.context])
                    out.add(ev, "similarity_context", float(np.max(ctx @ response)))
                out.add(ev, "similarity_prompt", float(np.dot(response, prompt)))

        out.guard(chosen, ["similarity_prompt"], run)
