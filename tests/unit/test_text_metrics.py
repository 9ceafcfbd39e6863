"""Text-overlap metrics: known values, agreement with rouge-score, METEOR with and without WordNet."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from atalaia.metrics.text import (
    METEOR,
    METEOR_EXACT,
    TextOverlapScorer,
    bleu_score,
    lcs_length,
    meteor_score,
    rouge_scores,
    wordnet_available,
)
from atalaia.settings import Settings

REQUIRE = os.environ.get("ATALAIA_REQUIRE_SERVICES") == "1"
SENTENCE = "The bank must hold capital against its credit risk exposures."


def test_identical_texts_score_one() -> None:
    assert rouge_scores(SENTENCE, SENTENCE) == {"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0}
    assert bleu_score(SENTENCE, SENTENCE) == pytest.approx(1.0)


def test_disjoint_texts_score_zero() -> None:
    prediction, reference = "purple elephants dance quietly", "the bank must hold capital"
    assert rouge_scores(prediction, reference) == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    assert bleu_score(prediction, reference) == 0.0


def test_partial_overlap_known_values() -> None:
    # 4 of 6 unigrams shared both ways; bigrams "the cat", "cat sat" shared of 5; LCS 4.
    scores = rouge_scores("the cat sat on a rug", "the cat sat near the rug")
    assert scores["rouge1"] == pytest.approx(4 / 6)
    assert scores["rouge2"] == pytest.approx(2 / 5)
    assert scores["rougeL"] == pytest.approx(4 / 6)
    assert 0.0 < bleu_score("the cat sat on a rug", "the cat sat near the rug") < 1.0


def test_stemmer_matches_inflections() -> None:
    assert rouge_scores("banks requiring", "bank requires")["rouge1"] == 1.0
    assert rouge_scores("banks requiring", "bank requires", stemmer=False)["rouge1"] == 0.0


def test_rouge_agrees_with_rouge_score_package() -> None:
    from rouge_score import rouge_scorer

    rng = random.Random(7)
    vocab = (
        "The bank's capital requirements, under Article 92 (CRR), must exceed 8% of risk-weighted "
        "assets; banks banking banked réglementation naïve e.g. U.S. İstanbul straße — “quoted”"
    ).split()
    references = {
        stem: rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=stem) for stem in (True, False)
    }
    for _ in range(300):
        prediction = " ".join(rng.choice(vocab) for _ in range(rng.randint(1, 40)))
        reference = " ".join(rng.choice(vocab) for _ in range(rng.randint(1, 40)))
        for stem, scorer in references.items():
            expected = {k: v.fmeasure for k, v in scorer.score(reference, prediction).items()}
            assert rouge_scores(prediction, reference, stemmer=stem) == expected, (prediction, reference)


def test_lcs_length_matches_dynamic_programming() -> None:
    def dp(a: list[str], b: list[str]) -> int:
        table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
        for i, x in enumerate(a):
            for j, y in enumerate(b):
                table[i + 1][j + 1] = table[i][j] + 1 if x == y else max(table[i][j + 1], table[i + 1][j])
        return table[-1][-1]

    rng = random.Random(3)
    for _ in range(500):
        a = [rng.choice("abcde") for _ in range(rng.randint(0, 90))]
        b = [rng.choice("abcde") for _ in range(rng.randint(0, 90))]
        assert lcs_length(a, b) == dp(a, b)


@pytest.mark.parametrize(
    ("prediction", "reference", "message"),
    [("", "ref", "empty prediction"), ("  \n", "ref", "empty prediction"), ("pred", "", "empty reference")],
)
def test_empty_text_is_an_error(prediction: str, reference: str, message: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=message):
        rouge_scores(prediction, reference)
    with pytest.raises(ValueError, match=message):
        bleu_score(prediction, reference)
    with pytest.raises(ValueError, match=message):
        meteor_score(prediction, reference, tmp_path)
    with pytest.raises(ValueError, match=message):
        TextOverlapScorer(tmp_path).score(prediction, reference)


def test_meteor_falls_back_without_wordnet(tmp_path: Path) -> None:
    assert not wordnet_available(tmp_path)
    name, value = meteor_score(SENTENCE, SENTENCE, tmp_path)
    assert name == METEOR_EXACT
    assert value == pytest.approx(1.0, abs=1e-3)

    scorer = TextOverlapScorer(tmp_path)
    assert scorer.meteor_name == METEOR_EXACT
    scores = scorer.score("the cat sat on the rug", "the cat sat on the carpet")
    assert list(scores) == ["rouge1", "rouge2", "rougeL", "bleu", METEOR_EXACT]
    assert all(0.0 <= v <= 1.0 for v in scores.values())


def test_score_batch(tmp_path: Path) -> None:
    scorer = TextOverlapScorer(tmp_path)
    predictions, references = [SENTENCE, "purple elephants"], [SENTENCE, "the bank"]
    batch = scorer.score_batch(predictions, references)
    assert batch == [scorer.score(p, r) for p, r in zip(predictions, references, strict=True)]
    assert batch[0]["rouge1"] == 1.0 and batch[1]["rouge1"] == 0.0
    with pytest.raises(ValueError, match="empty reference at index 1"):
        scorer.score_batch([SENTENCE, SENTENCE], [SENTENCE, " "])
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        scorer.score_batch([SENTENCE, SENTENCE], [SENTENCE])


def test_meteor_with_wordnet() -> None:
    nltk_data = Settings().nltk_data
    assert nltk_data is not None
    if not wordnet_available(nltk_data):
        message = f"WordNet not installed under {nltk_data} (run scripts/wordnet.sh)"
        if REQUIRE:
            pytest.fail(f"{message}; required because ATALAIA_REQUIRE_SERVICES=1")
        pytest.skip(message)
    scorer = TextOverlapScorer(nltk_data)
    assert scorer.meteor_name == METEOR
    prediction, reference = "the cat sat on the rug", "the cat sat on the carpet"
    name, with_synonyms = meteor_score(prediction, reference, nltk_data)
    assert name == METEOR
    # "rug" and "carpet" share a WordNet synset: a match the exact+stem fallback cannot make.
    _, exact_only = meteor_score(prediction, reference, nltk_data / "no-such-folder")
    assert exact_only < with_synonyms <= 1.0
    assert scorer.score(prediction, reference)[METEOR] == pytest.approx(with_synonyms)
