"""Text-overlap metrics: known values, agreement with rouge-score, METEOR with and without WordNet."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from atalaia.metrics.text import (
    METEOR,
    METEOR_EXACT,
    RougeTokenizer,
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
    # On ASCII text the Unicode tokenizer makes rouge-score's own tokens: English scores are exactly
    # rouge-score's defaults (Porter stemmer).
    from rouge_score import rouge_scorer

    rng = random.Random(7)
    vocab = (
        "The bank's capital requirements, under Article 92 (CRR), must exceed 8% of risk-weighted "
        "assets; banks banking banked e.g. U.S. snake_case -- quoted"
    ).split()
    references = {
        stem: rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=stem) for stem in (True, False)
    }
    for _ in range(300):
        prediction = " ".join(rng.choice(vocab) for _ in range(rng.randint(1, 40)))
        reference = " ".join(rng.choice(vocab) for _ in range(rng.randint(1, 40)))
        for stem, scorer in references.items():
            expected = {k: v.fmeasure for k, v in scorer.score(reference, prediction).items()}
            assert rouge_scores(prediction, reference, stemmer=stem, language="en") == expected, (prediction, reference)


@pytest.mark.parametrize("language", ["en", "pt", "fr", "de"])
def test_rouge_agrees_with_rouge_score_given_the_unicode_tokenizer(language: str) -> None:
    # With non-ASCII text, rouge-score's formulas over RougeTokenizer (its tokenizer= argument).
    from rouge_score import rouge_scorer

    rng = random.Random(11)
    vocab = (
        "réglementation naïve İstanbul straße “quoted” não é permitido levar portátil três dias úteis "
        "Ação ações coração corações l'été d'água Über Grüße 2026 N\u0303o"
    ).split()
    for stem in (True, False):
        scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=RougeTokenizer(language, stem))
        for _ in range(100):
            prediction = " ".join(rng.choice(vocab) for _ in range(rng.randint(1, 30)))
            reference = " ".join(rng.choice(vocab) for _ in range(rng.randint(1, 30)))
            expected = {k: v.fmeasure for k, v in scorer.score(reference, prediction).items()}
            got = rouge_scores(prediction, reference, stemmer=stem, language=language)
            assert got == expected, (prediction, reference)


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


# -- Portuguese (and other Latin-script languages): expected values computed by hand -------------


def test_portuguese_rouge_by_words() -> None:
    # Tokens: não|são, é, permitido, levar, o, portátil: 5 of 6 unigrams shared both ways (rouge-score
    # made "não" into "n" + "o" and gave 6/7). Bigrams: (é permitido), (permitido levar), (levar o),
    # (o portátil) shared of 5. LCS: the last 5 tokens.
    scores = rouge_scores("São é permitido levar o portátil", "Não é permitido levar o portátil")
    assert scores["rouge1"] == pytest.approx(5 / 6)
    assert scores["rouge2"] == pytest.approx(4 / 5)
    assert scores["rougeL"] == pytest.approx(5 / 6)
    # 7 words each, "três" / "dez" differ: 6/7; bigrams 4 of 6 (de três, três dias / de dez, dez dias).
    scores = rouge_scores("O prazo é de dez dias úteis", "O prazo é de três dias úteis")
    assert scores["rouge1"] == pytest.approx(6 / 7)
    assert scores["rouge2"] == pytest.approx(4 / 6)
    assert scores["rougeL"] == pytest.approx(6 / 7)


def test_portuguese_stemmer_matches_inflections() -> None:
    # Snowball Portuguese: gender, number and the -ção noun share a stem; Porter keeps them apart.
    from atalaia.metrics.text import stemmer_for

    stem = stemmer_for("pt")
    assert stem("permitidos") == stem("permitido") == "permit"
    assert stem("aprovada") == stem("aprovado") == stem("aprovação") == "aprov"
    prediction, reference = "pedidos aprovados pela empresa", "pedido aprovada pelas empresas"
    # pela / pelas are 4 and 5 letters: both stemmed, to "pel".
    assert rouge_scores(prediction, reference)["rouge1"] == 1.0
    assert rouge_scores(prediction, reference, stemmer=False)["rouge1"] == 0.0
    # Porter only strips the plural -s: "aprovados" / "aprovada" stay apart, 3 of 4.
    assert rouge_scores(prediction, reference, language="en")["rouge1"] == pytest.approx(3 / 4)


def test_decomposed_accents_equal_precomposed() -> None:
    # "não" typed as n + a + U+0303 (combining tilde) is the same word as the precomposed one.
    assert rouge_scores("N\u0061\u0303o é permitido", "Não é permitido")["rouge1"] == 1.0


def test_text_scorer_reports_language_and_meteor_variant(tmp_path: Path) -> None:
    scorer = TextOverlapScorer(tmp_path)
    lang, scores = scorer.score_with_language("São é permitido levar o portátil", "Não é permitido levar o portátil")
    assert lang == "pt"
    assert scores["rouge1"] == pytest.approx(5 / 6)
    assert list(scores) == ["rouge1", "rouge2", "rougeL", "bleu", METEOR_EXACT]
    # METEOR, exact matches: 5 of 6 unigrams each way (P = R = 5/6, Fmean = 5/6), one chunk of 5
    # matches: penalty 0.5 * (1/5)^3 = 0.004, so 5/6 * 0.996.
    assert scores[METEOR_EXACT] == pytest.approx(5 / 6 * (1 - 0.5 * (1 / 5) ** 3))
    # English pair through the same scorer: the English variant and Porter stems.
    lang, scores = scorer.score_with_language("the banks required", "the bank requires")
    assert lang == "en" and scores["rouge1"] == 1.0
    # A fixed language wins over detection; an undetermined pair falls back.
    assert TextOverlapScorer(tmp_path, language="pt").score_with_language("x", "y")[0] == "pt"
    assert TextOverlapScorer(tmp_path, fallback_language="pt").score_with_language("42", "42")[0] == "pt"


def test_bleu_keeps_accented_words_whole() -> None:
    # Identical accented text scores 1; Unicode punctuation around words does not split them off
    # the match under the intl tokenizer: «Não» vs Não is a full match of the words.
    sentence = "Não é permitido levar o portátil para casa"
    assert bleu_score(sentence, sentence) == pytest.approx(1.0)
    assert bleu_score("«Não é permitido levar o portátil para casa»", sentence) > bleu_score(
        "«Não é permitido levar o portátil para casa»", sentence, language="en"
    )


def test_language_detector() -> None:
    from atalaia.metrics.language import detect_language

    assert detect_language("O prazo é de três dias úteis") == "pt"
    assert detect_language("The deadline is three working days") == "en"
    assert detect_language("El plazo es de tres días hábiles y no se puede ampliar") == "es"
    assert detect_language("Le délai est de trois jours ouvrables") == "fr"
    assert detect_language("Die Frist beträgt drei Arbeitstage und ist nicht verlängerbar") == "de"
    assert detect_language("12345") == "und"
