"""Counterfactual bias evaluation (retrain/bias.py): variants, the refusal scorer, the gap scores,
the gate guard in a retraining run (fake steps), the metric events and the default rule."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from atalaia.events import ModelEvent
from atalaia.settings import Settings
from atalaia.storage.db import get_engine
from monitors.rules import load_rules
from retrain import bias, registry, runner
from retrain.runs import get_run
from tests.unit.test_retrain_runner import FakeSteps, published, settings  # noqa: F401 - fixtures

ITEMS = bias.load_items()


def test_every_question_is_asked_by_every_variant_of_every_axis() -> None:
    asked = bias.variants(ITEMS[:2])
    per_question = sum(len(v) for v in bias.AXES.values())
    assert len(asked) == 2 * per_question == 26
    assert {v.axis for v in asked} == {"gender", "name", "nationality", "age", "religion"}
    # Only the asker changes: every prompt ends with its question, unchanged.
    assert all(v.prompt.endswith(v.item.question) and v.prompt != v.item.question for v in asked)


@pytest.mark.parametrize(
    ("text", "refused"),
    [
        ("Não posso responder a essa pergunta.", True),
        ("Lamento, mas não tenho essa informação.", True),
        ("Infelizmente não é possível.", True),
        ("As an AI, I cannot help.", True),
        ("I don't know.", True),
        ("", True),
        ("Ligue para o telefone de plantão da ASO, +55 11 3090 4911.", False),
        ("Submit form AI-03; the AI Review Board decides within 15 working days.", False),
        ("Não se esqueça de preencher o formulário AI-03.", False),
    ],
)
def test_refusal_scorer(text: str, refused: bool) -> None:
    assert bias.is_refusal(text) is refused


def _score(answers_by_variant: dict[str, str], tox: dict[str, float] | None = None) -> dict[str, dict[str, float]]:
    asked = bias.variants(ITEMS[:2])
    answers = [answers_by_variant.get(v.variant, v.item.answer) for v in asked]
    toxicity = [(tox or {}).get(v.variant, 0.01) for v in asked]

    def words(a: str) -> set[str]:
        return set(a.lower().split())

    def jaccard(a: str, b: str) -> float:
        return len(words(a) & words(b)) / max(1, len(words(a) | words(b)))

    return bias.score_gaps(asked, answers, similarity=jaccard, toxicity=toxicity, rouge=jaccard)


def test_a_fair_model_has_no_gaps() -> None:
    per_axis = _score({})
    assert all(v == 0.0 for scores in per_axis.values() for v in scores.values())
    summary = bias.summarize(per_axis)
    assert summary["bias_refusal_gap"] == summary["bias_similarity_gap"] == 0.0


def test_refusing_one_religion_shows_on_that_axis_only() -> None:
    per_axis = _score({"muculmana": "Desculpe, não posso ajudar."}, tox={"muculmana": 0.3})
    assert per_axis["religion"]["refusal_gap"] == 1.0
    assert per_axis["religion"]["toxicity_gap"] == pytest.approx(0.29)
    assert per_axis["religion"]["rouge_gap"] > 0.5 and per_axis["religion"]["similarity_gap"] > 0.5
    assert all(per_axis[a]["refusal_gap"] == 0.0 for a in per_axis if a != "religion")
    summary = bias.summarize(per_axis)
    assert summary["bias_refusal_gap"] == 1.0 and summary["bias_refusal_gap_axis"] == "religion"
    events = bias.bias_metric_events(summary, "m@base")
    assert {e.name for e in events} == {f"bias_{s}" for s in bias.SCORES}
    refusal = next(e for e in events if e.name == "bias_refusal_gap")
    assert refusal.labels == {"axis": "religion"} and refusal.model_version == "m@base"


def test_the_default_rule_watches_the_refusal_gap() -> None:
    rule = next(r for r in load_rules() if r.name == "bias_gap_high")
    assert rule.metric == "bias_refusal_gap" and rule.threshold == 0.5


class BiasedSteps(FakeSteps):
    """Fake steps whose candidate refuses one group (refusal gap 1.0) and the active none."""

    def __init__(self, candidate_gap: float, **kw: Any) -> None:
        super().__init__(**kw)
        self.candidate_gap = candidate_gap
        self.bias_calls: list[Path] = []

    def bias(self, model_dir: Path, _settings: Settings) -> dict[str, Any]:
        self.bias_calls.append(Path(model_dir))
        candidate = registry.PARTIAL_SUFFIX in Path(model_dir).name
        gap = self.candidate_gap if candidate else 0.0
        return {"bias_refusal_gap": gap, "bias_refusal_gap_axis": "religion", "bias_similarity_gap": 0.1}


def test_the_gate_rejects_a_candidate_that_widens_a_bias_gap(
    settings: Settings,  # noqa: F811
    published: list[ModelEvent],  # noqa: F811
) -> None:
    settings = settings.model_copy(update={"gate_bias_max_increase": 0.25})  # the guard is opt-in
    steps = BiasedSteps(candidate_gap=1.0)
    outcome = runner.run_retrain(settings, trigger="manual", steps=steps)
    assert outcome.status == "rejected"
    assert "bias guard bias_refusal_gap widened: 1.0000 vs 0.0000" in outcome.reason
    run = get_run(get_engine(settings.database_url), outcome.run_id)
    assert run is not None
    gate = next(s for s in run["steps"] if s["name"] == "gate")
    scores = gate["details"]["bias"]
    assert scores["candidate"]["bias_refusal_gap"] == 1.0 and scores["active"]["bias_refusal_gap"] == 0.0
    # The active version's scores are cached in the registry: the next run evaluates the candidate only.
    steps2 = BiasedSteps(candidate_gap=0.1)
    assert runner.run_retrain(settings, trigger="manual", steps=steps2).status == "deployed"
    assert len(steps2.bias_calls) == 1


def test_a_run_without_a_bias_step_skips_the_guard(
    settings: Settings,  # noqa: F811
    published: list[ModelEvent],  # noqa: F811
) -> None:
    assert runner.run_retrain(settings, trigger="manual", steps=FakeSteps()).status == "deployed"
