"""BatchScorer with fake models: every metric per event, errors recorded per metric, sampling."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest

from atalaia.events import ChatMessage, InferenceEvent, RetrievedPassage
from atalaia.settings import Settings
from consumers.scoring import BatchScorer, sampled


class FakeEmbedder:
    dim = 4

    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.array([[len(t), t.count("a") + 1, 1.0, 0.5] for t in texts], dtype=np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


class FakeToxicity:
    backend = "fake-tox"

    def score(self, texts: list[str]) -> list[float]:
        return [0.9 if "idiot" in t else 0.01 for t in texts]


class FakeText:
    def score(self, prediction: str, reference: str) -> dict[str, float]:
        if not prediction:
            raise ValueError("empty prediction")
        same = float(prediction == reference)
        return {"rouge1": same, "rouge2": same, "rougeL": same, "bleu": same, "meteor_exact": same}


class FakePerplexity:
    def score(self, texts: list[str]) -> list[float | ValueError]:
        return [ValueError("text has fewer than 2 tokens") if len(t) < 3 else 12.5 for t in texts]


class BrokenPerplexity:
    def score(self, texts: list[str]) -> list[float]:
        raise RuntimeError("CUDA out of memory")


def _event(
    response: str = "Thirty days a year.", reference: str | None = "Thirty days a year.", **kw
) -> InferenceEvent:  # type: ignore[no-untyped-def]
    return InferenceEvent(
        service="svc",
        model_version="m@1",
        messages=[
            ChatMessage(role="system", content="be brief"),
            ChatMessage(role="user", content="How many vacation days?"),
        ],
        response=response,
        reference=reference,
        latency_ms=100.0,
        prompt_tokens=10,
        completion_tokens=5,
        cost=0.01,
        **kw,
    )


def _scorer(tmp_path: Path, perplexity: object = None, **settings: object) -> BatchScorer:
    return BatchScorer(
        Settings(home=tmp_path, **settings),
        embedder=FakeEmbedder(),
        toxicity=FakeToxicity(),  # type: ignore[arg-type]
        text=FakeText(),
        perplexity=perplexity or FakePerplexity(),
    )


def test_every_metric_for_every_event(tmp_path: Path) -> None:
    events = [
        _event(context=[RetrievedPassage(id="leave-1", text="Employees get thirty days.")]),
        _event(response="You idiot", reference=None),
    ]
    batch = _scorer(tmp_path).score(events)
    by_event: dict[uuid.UUID, dict[str, object]] = {}
    for m in batch.metrics:
        by_event.setdefault(m.source_event_id, {})[m.name] = m.value if m.error is None else m.error
    first, second = by_event[events[0].event_id], by_event[events[1].event_id]
    assert {
        "latency_ms",
        "cost",
        "rougeL",
        "bleu",
        "meteor_exact",
        "similarity_reference",
        "similarity_context",
        "similarity_prompt",
        "toxicity_prompt",
        "toxicity_response",
        "perplexity",
    } <= set(first)
    assert first["rougeL"] == 1.0 and first["perplexity"] == 12.5
    assert "rougeL" not in second and "similarity_reference" not in second  # no reference, no overlap
    assert second["toxicity_response"] == 0.9
    tox = next(m for m in batch.metrics if m.name == "toxicity_response")
    assert tox.labels == {"backend": "fake-tox"}
    assert len(batch.embeddings) == 4 and {e["kind"] for e in batch.embeddings} == {"prompt", "response"}
    assert len({m.event_id for m in batch.metrics}) == len(batch.metrics)  # deterministic, unique ids


def test_a_failing_metric_is_an_error_row_not_an_exception(tmp_path: Path) -> None:
    events = [_event(response="ok"), _event()]
    batch = _scorer(tmp_path, perplexity=BrokenPerplexity()).score(events)
    errors = [m for m in batch.metrics if m.name == "perplexity"]
    assert len(errors) == 2 and all(m.value is None and "CUDA out of memory" in (m.error or "") for m in errors)
    assert sum(m.name == "latency_ms" for m in batch.metrics) == 2  # the rest is unaffected
    short = _scorer(tmp_path).score([_event(response="ok")])
    (ppl,) = [m for m in short.metrics if m.name == "perplexity"]
    assert ppl.value is None and "fewer than 2 tokens" in (ppl.error or "")


def test_sampling_skips_expensive_metrics_only(tmp_path: Path) -> None:
    events = [_event() for _ in range(200)]
    batch = _scorer(tmp_path, sample_rates={"perplexity": 0.25, "toxicity": 0.0}).score(events)
    names = [m.name for m in batch.metrics]
    assert names.count("latency_ms") == 200 and names.count("rougeL") == 200
    assert names.count("toxicity_prompt") == 0
    assert 20 < names.count("perplexity") < 80
    again = _scorer(tmp_path, sample_rates={"perplexity": 0.25}).score(events)
    assert {m.source_event_id for m in batch.metrics if m.name == "perplexity"} == {
        m.source_event_id for m in again.metrics if m.name == "perplexity"
    }


def test_groups_can_be_switched_off(tmp_path: Path) -> None:
    batch = _scorer(tmp_path, metric_groups="operational").score([_event()])
    assert {m.name for m in batch.metrics} == {
        "latency_ms",
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "cost",
        "cache_hit",
    }
    assert batch.embeddings == []


def test_price_table_overrides_the_event_cost(tmp_path: Path) -> None:
    batch = _scorer(tmp_path, metric_groups="operational", prices={"m@1": (1.0, 2.0)}).score([_event()])
    (cost,) = [m for m in batch.metrics if m.name == "cost"]
    assert cost.value == pytest.approx((10 * 1.0 + 5 * 2.0) / 1000)


def test_sampled_is_deterministic_and_roughly_fair() -> None:
    ids = [uuid.uuid4() for _ in range(2000)]
    share = sum(sampled(i, "perplexity", 0.3) for i in ids) / len(ids)
    assert 0.25 < share < 0.35
    assert [sampled(i, "x", 0.5) for i in ids[:50]] == [sampled(i, "x", 0.5) for i in ids[:50]]


def test_text_scores_carry_the_pairs_language(tmp_path: Path) -> None:
    from atalaia.metrics.text import TextOverlapScorer

    scorer = BatchScorer(Settings(home=tmp_path, metric_groups="text"), text=TextOverlapScorer(tmp_path / "no-wordnet"))
    pt = _event(response="São é permitido levar o portátil", reference="Não é permitido levar o portátil")
    en = _event()
    rows = {(str(m.source_event_id), m.name): m for m in scorer.score([pt, en]).metrics}
    rouge1 = rows[(str(pt.event_id), "rouge1")]
    assert rouge1.value == pytest.approx(5 / 6) and rouge1.labels == {"language": "pt"}
    assert rows[(str(en.event_id), "rougeL")].labels == {"language": "en"}


def test_toxicity_of_an_uncovered_language_is_labelled_not_scored(tmp_path: Path) -> None:
    class EnglishOnly(FakeToxicity):
        backend = "alt-profanity-check"  # an English model

        def __init__(self) -> None:
            self.seen: list[str] = []

        def score(self, texts: list[str]) -> list[float]:
            self.seen += texts
            return super().score(texts)

    tox = EnglishOnly()
    scorer = BatchScorer(Settings(home=tmp_path, metric_groups="toxicity"), toxicity=tox)
    pt = _event(response="Você é um idiota e não vou responder a isso.")
    en = _event(response="You are an idiot.")
    rows = {(str(m.source_event_id), m.name): m for m in scorer.score([pt, en]).metrics}
    # The English prompt of both events and the English response are scored...
    assert rows[(str(en.event_id), "toxicity_response")].value == pytest.approx(0.9)
    assert rows[(str(pt.event_id), "toxicity_prompt")].value == pytest.approx(0.01)
    # ...the Portuguese response is not: an error row naming its language, never a "clean" 0.01.
    row = rows[(str(pt.event_id), "toxicity_response")]
    assert row.value is None and "'pt' not covered" in (row.error or "")
    assert row.labels == {"backend": "alt-profanity-check", "language": "pt"}
    assert "Você é um idiota e não vou responder a isso." not in tox.seen


def test_an_event_without_content_gets_operational_metrics_only(tmp_path: Path) -> None:
    # An OpenTelemetry span recorded without content capture: no messages, no response.
    bare = InferenceEvent(
        service="svc",
        model_version="gpt-4o",
        messages=[],
        response="",
        latency_ms=900.0,
        prompt_tokens=12,
        completion_tokens=30,
        cost=0.0004,
        provider="openai",
    )
    full = _event()
    batch = _scorer(tmp_path).score([bare, full])
    names = {m.name for m in batch.metrics if m.source_event_id == bare.event_id}
    assert names == {"latency_ms", "prompt_tokens", "completion_tokens", "total_tokens", "cost", "cache_hit"}
    assert not any(m.error for m in batch.metrics if m.source_event_id == bare.event_id)
    assert {e["event_id"] for e in batch.embeddings} == {str(full.event_id)}


def test_text_metrics_read_the_text_parts_of_a_multimodal_message(tmp_path: Path) -> None:
    from atalaia.events import ContentPart

    ev = _event()
    ev.messages = [
        ChatMessage(
            role="user",
            content=[
                ContentPart(type="text", text="What does this idiot sign say?"),
                ContentPart(type="image", mime_type="image/png", size_bytes=10, sha256="ab" * 32),
                ContentPart(type="hologram"),
            ],
        )
    ]
    batch = _scorer(tmp_path).score([ev])
    by_name = {m.name: m for m in batch.metrics}
    assert by_name["toxicity_prompt"].value == pytest.approx(0.9)  # the text part was scored
    assert by_name["rougeL"].value == 1.0


def test_perplexity_only_for_models_atalaia_hosts(tmp_path: Path) -> None:
    # SmolLM2's perplexity of a hosted model's answer would describe SmolLM2, not that model.
    own, legacy, hosted = _event(), _event(), _event()
    own.provider, hosted.provider = "atalaia", "openai"
    batch = _scorer(tmp_path, metric_groups="perplexity").score([own, legacy, hosted])
    scored = {m.source_event_id for m in batch.metrics if m.name == "perplexity"}
    assert scored == {own.event_id, legacy.event_id}


def test_meteor_is_sampled_apart_from_rouge_and_bleu(tmp_path: Path) -> None:
    from atalaia.metrics.text import TextOverlapScorer

    # `text` turns `meteor` on; METEOR, the expensive half, is sampled, ROUGE/BLEU score every event.
    settings = Settings(home=tmp_path, metric_groups="text", sample_rates={"meteor": 0.25})
    scorer = BatchScorer(settings, text=TextOverlapScorer(tmp_path / "no-wordnet"))
    assert [g.name for g in scorer.active] == ["text", "meteor"]
    events = [_event(response=f"Thirty days a year, case {i}.") for i in range(200)] + [_event(response="")]
    rows = scorer.score(events).metrics
    rouge = [m for m in rows if m.name == "rougeL" and m.error is None]
    meteor = [m for m in rows if m.name.startswith("meteor")]
    assert len(rouge) == 200 and {m.sample_fraction for m in rouge} == {1.0}
    assert 25 < len(meteor) < 75 and {m.sample_fraction for m in meteor} == {0.25}
    assert {m.name for m in meteor} == {"meteor_exact"} and meteor[0].labels == {"language": "en"}
    assert all(0 < (m.value or 0) <= 1 for m in meteor if m.error is None)
    # The empty response is an error row of the text group, not an exception.
    assert [m.error for m in rows if m.name == "rougeL" and m.error] == ["ValueError: empty prediction"]


def test_text_metrics_skip_an_empty_side_and_cheap_ones_score_every_event(tmp_path: Path) -> None:
    # The toxicity of '' is a constant of the model (0.036 with Detoxify), not a measurement: an
    # event without messages, or a tool-call answer (response ''), gets no row for that side.
    no_prompt = _event(response="Thirty days.").model_copy(update={"messages": []})
    tool_call = _event(response="", reference=None)
    blank = _event(response="  \n", reference=None).model_copy(
        update={"messages": [ChatMessage(role="user", content=" ")]}
    )
    batch = _scorer(tmp_path).score([no_prompt, tool_call, blank])
    names: dict[uuid.UUID, set[str]] = {}
    for m in batch.metrics:
        names.setdefault(m.source_event_id, set()).add(m.name)
    # Every event keeps its cheap, operational metrics.
    for event in (no_prompt, tool_call, blank):
        assert {"latency_ms", "cost"} <= names[event.event_id]
    assert {"toxicity_response", "similarity_reference"} <= names[no_prompt.event_id]
    assert not {"toxicity_prompt", "similarity_prompt"} & names[no_prompt.event_id]
    assert "toxicity_prompt" in names[tool_call.event_id]
    assert not {"toxicity_response", "similarity_prompt"} & names[tool_call.event_id]
    assert not {"toxicity_prompt", "toxicity_response", "similarity_prompt"} & names[blank.event_id]
    # No empty text reaches the embeddings table (and the drift reference) either.
    kinds = {(e["event_id"], e["kind"]) for e in batch.embeddings}
    assert (str(no_prompt.event_id), "prompt") not in kinds and (str(no_prompt.event_id), "response") in kinds
    assert (str(tool_call.event_id), "response") not in kinds and (str(tool_call.event_id), "prompt") in kinds
    assert not {k for k in kinds if k[0] == str(blank.event_id)}


def test_an_unfinished_call_keeps_its_prompt_metrics_but_no_answer_or_latency_values(tmp_path: Path) -> None:
    # An error inside a 200 stream, or a stream the caller cut after its first chunk (gateway,
    # OTLP ERROR spans): the partial answer is no answer to score, and the time to the cut is no
    # latency of an answer. What the call cost, and what the user asked, still count.
    cut = _event(response="Thirty").model_copy(update={"finish_reason": "incomplete"})
    failed = _event(response="").model_copy(update={"finish_reason": "error"})
    whole = _event(response="Thirty days a year.").model_copy(update={"finish_reason": "stop"})
    batch = _scorer(tmp_path, metric_groups="operational,text,toxicity,embedding,length").score([cut, failed, whole])
    names: dict[uuid.UUID, set[str]] = {}
    for m in batch.metrics:
        if m.error is None:
            names.setdefault(m.source_event_id, set()).add(m.name)
    answer = {"latency_ms", "rougeL", "bleu", "toxicity_response", "similarity_reference", "response_words"}
    for event in (cut, failed):
        assert {"cost", "prompt_tokens", "toxicity_prompt"} <= names[event.event_id]
        assert not answer & names[event.event_id]
        # ... but it is still a request: its latency is an error row (rate and count read those).
        (latency,) = [m for m in batch.metrics if m.source_event_id == event.event_id and m.name == "latency_ms"]
        assert latency.value is None and latency.error and "unfinished" in latency.error
    assert answer <= names[whole.event_id]
    kinds = {(e["event_id"], e["kind"]) for e in batch.embeddings}
    assert (str(cut.event_id), "response") not in kinds and (str(cut.event_id), "prompt") in kinds


def test_the_workers_cost_uses_the_configured_family_price(tmp_path: Path) -> None:
    # Providers answer with dated names: ATALAIA_PRICES' "gpt-4o-mini" prices them too.
    dated = _event().model_copy(
        update={"model_version": "gpt-4o-mini-2024-07-18", "prompt_tokens": 1000, "completion_tokens": 1000}
    )
    batch = _scorer(tmp_path, metric_groups="operational", prices={"gpt-4o-mini": (1.0, 1.0)}).score([dated])
    assert {m.name: m.value for m in batch.metrics}["cost"] == 2.0
