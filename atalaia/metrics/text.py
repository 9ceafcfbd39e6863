"""Text-overlap metrics of a response against a reference answer: ROUGE, BLEU and METEOR.

All scores are in 0..1 (BLEU is rescaled from sacrebleu's 0..100) so that alert thresholds read
the same for every metric.

Every pair is first given a language (:func:`pair_language`: detected on the reference and the
response by :mod:`atalaia.metrics.language`, or fixed by ``ATALAIA_TEXT_LANGUAGE``), which picks
the stemmer and is returned with the scores (the workers store it as the ``language`` label).

- **ROUGE** (``rouge1``, ``rouge2``, ``rougeL``, F-measure): the formulas of Google's
  ``rouge-score`` package, computed here with a cached stemmer and a bit-parallel LCS, about 3x
  faster than ``rouge_scorer.RougeScorer``. rouge-score's default tokenizer keeps ASCII letters
  and digits only, so "não" became "n" + "o" and every Portuguese score was wrong; here tokens are
  Unicode letters and digits (NFC, lower-cased), and words over three characters are stemmed by
  the pair's language: Porter for English (rouge-score's stemmer, so English scores are exactly
  rouge-score's; the tests check it), NLTK's Snowball stemmer for Portuguese, Spanish, French,
  German, Italian, Dutch, ... (shipped with NLTK's code, no data download), none for a language
  without one. :class:`RougeTokenizer` is the same tokenizer for ``RougeScorer(tokenizer=...)``.
- **BLEU** (``bleu``): sacrebleu's sentence BLEU (exponential smoothing, effective order), divided
  by 100; tokenizer 13a for English (sacrebleu's default) and ``intl`` for other languages, which
  also splits Unicode punctuation (« », “ ”, …) from words.
- **METEOR**: NLTK's implementation, with the pair's stemmer. With WordNet (``scripts/wordnet.sh``
  installs it under ``ATALAIA_NLTK_DATA``) the metric of an English pair is ``meteor``: exact,
  stem and synonym matches. Without WordNet, or for a pair in another language (WordNet's synonyms
  are English), the metric is named ``meteor_exact``: the same formula with exact and stem matches
  only, which scores lower whenever the texts use synonyms, so it is never stored under the
  ``meteor`` name. Non-English texts are split into Unicode words and punctuation marks.

Heavy imports (nltk pulls in scipy) happen on first use, not at import.
"""

from __future__ import annotations

import functools
import logging
import re
import unicodedata
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from atalaia.metrics.language import UNDETERMINED, detect_language

logger = logging.getLogger(__name__)

METEOR = "meteor"
METEOR_EXACT = "meteor_exact"
ROUGE_METRICS = ("rouge1", "rouge2", "rougeL")

# rouge-score's tokenizer (rouge_score/tokenize.py) with Unicode letters and digits instead of
# [a-z0-9]: on ASCII text the tokens are the same. Combining marks continue a word ("i̇" from
# "İ".lower() has no precomposed form).
_TOKEN = re.compile(r"[^\W_](?:[^\W_]|[\u0300-\u036f])*")
# METEOR outside English: words and single punctuation marks, as NLTK's tokenizer makes in English.
_METEOR_TOKEN = re.compile(r"[^\W_](?:[^\W_]|[\u0300-\u036f])*|[^\w\s]")

#: Languages stemmed with NLTK's Snowball stemmers (ISO 639-1 code -> Snowball name); English uses
#: Porter, as rouge-score and METEOR do.
SNOWBALL_LANGUAGES = {
    "pt": "portuguese",
    "es": "spanish",
    "fr": "french",
    "de": "german",
    "it": "italian",
    "nl": "dutch",
    "sv": "swedish",
    "da": "danish",
    "no": "norwegian",
    "fi": "finnish",
    "ro": "romanian",
    "hu": "hungarian",
    "ru": "russian",
    "ar": "arabic",
}
#: ``ATALAIA_TEXT_LANGUAGE`` value that detects each pair's language.
AUTO = "auto"
DEFAULT_LANGUAGE = "en"

# Distinct words in responses are few next to the tokens scored; stemming every token again was
# two thirds of rouge-score's run time.
_STEM_CACHE_SIZE = 200_000


def _check_texts(prediction: str, reference: str) -> None:
    # An empty side makes every overlap metric 0 or undefined; callers record it as an error of the
    # metric rather than a misleading 0.
    if not prediction or not prediction.strip():
        raise ValueError("empty prediction")
    if not reference or not reference.strip():
        raise ValueError("empty reference")


def _identity(token: str) -> str:
    return token


@functools.cache
def stemmer_for(language: str) -> Callable[[str], str]:
    """The stem function of a language (ISO 639-1), behind an LRU cache shared by the process.

    Porter for English (the one rouge-score and METEOR use), NLTK's Snowball stemmer for the
    languages of :data:`SNOWBALL_LANGUAGES`, and no stemming for any other (``"und"`` included).

    >>> stemmer_for("en")("requirements"), stemmer_for("pt")("permitido"), stemmer_for("xx")("words")
    ('requir', 'permit', 'words')
    """
    if language == "en":
        from nltk.stem.porter import PorterStemmer

        stem: Callable[[str], str] = PorterStemmer().stem
    elif language in SNOWBALL_LANGUAGES:
        from nltk.stem.snowball import SnowballStemmer

        stem = SnowballStemmer(SNOWBALL_LANGUAGES[language]).stem
    else:
        return _identity
    return functools.lru_cache(maxsize=_STEM_CACHE_SIZE)(stem)


def _cached_stem() -> Callable[[str], str]:
    # The English stemmer (kept for callers of the old name).
    return stemmer_for("en")


class _CachedStemmer:
    """``nltk.stem.api.StemmerI`` look-alike over the shared cache, for METEOR."""

    def __init__(self, language: str = "en") -> None:
        self._stem = stemmer_for(language)

    def stem(self, token: str) -> str:
        return self._stem(token)


def pair_language(prediction: str, reference: str, language: str = AUTO, fallback: str = DEFAULT_LANGUAGE) -> str:
    """The language a (response, reference) pair is scored in.

    ``language`` other than ``"auto"`` is used as it is. Otherwise the reference and the response
    are read together (one language for both, so both sides are stemmed alike); when nothing points
    to a language, ``fallback``.

    >>> pair_language("São é permitido levar o portátil", "Não é permitido levar o portátil")
    'pt'
    >>> pair_language("42", "42"), pair_language("x", "y", language="pt")
    ('en', 'pt')
    """
    if language != AUTO:
        return language
    found = detect_language(f"{reference}\n{prediction}")
    return fallback if found == UNDETERMINED else found


def rouge_tokens(text: str, stemmer: bool = True, language: str = "en") -> list[str]:
    """Tokens as rouge-score makes them, with Unicode letters: lower-cased letters and digits, stems
    of words over 3 characters (the ``language``'s stemmer).

    >>> rouge_tokens("The banks' capital-requirements, 2026!")
    ['the', 'bank', 'capit', 'requir', '2026']
    >>> rouge_tokens("The banks", stemmer=False)
    ['the', 'banks']
    >>> rouge_tokens("Não é permitido levar o portátil", language="pt")
    ['não', 'é', 'permit', 'lev', 'o', 'portátil']
    """
    tokens = _TOKEN.findall(unicodedata.normalize("NFC", text.lower()))
    if stemmer:
        stem = stemmer_for(language)
        tokens = [stem(t) if len(t) > 3 else t for t in tokens]
    return tokens


class RougeTokenizer:
    """:func:`rouge_tokens` for ``rouge_score.rouge_scorer.RougeScorer(tokenizer=...)``.

    >>> RougeTokenizer("pt").tokenize("Três dias úteis")
    ['três', 'dias', 'úte']
    """

    def __init__(self, language: str = "en", stemmer: bool = True) -> None:
        self.language = language
        self.stemmer = stemmer

    def tokenize(self, text: str) -> list[str]:
        """Tokens of ``text`` (rouge-score's ``Tokenizer`` interface)."""
        return rouge_tokens(text, self.stemmer, self.language)


def _fmeasure(precision: float, recall: float) -> float:
    # Same expression as rouge_score.scoring.fmeasure, so values agree to the last bit.
    if precision + recall > 0:
        return 2 * precision * recall / (precision + recall)
    return 0.0


def _ngram_fmeasure(prediction: list[str], reference: list[str], n: int) -> float:
    pred = Counter(zip(*(prediction[i:] for i in range(n)), strict=False))
    ref = Counter(zip(*(reference[i:] for i in range(n)), strict=False))
    overlap = sum((pred & ref).values())
    precision = overlap / max(sum(pred.values()), 1)
    recall = overlap / max(sum(ref.values()), 1)
    return _fmeasure(precision, recall)


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token lists.

    Bit-parallel (Allison-Dix / Hyyrö): one Python big-int operation per token of ``b`` instead of
    a ``len(a) x len(b)`` table, which was most of rouge-score's time on paragraph-sized texts.

    >>> lcs_length("a b c d e".split(), "a c e x".split())
    3
    >>> lcs_length([], ["a"])
    0
    """
    if not a or not b:
        return 0
    masks: dict[str, int] = {}
    for i, token in enumerate(a):
        masks[token] = masks.get(token, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    for token in b:
        u = v & masks.get(token, 0)
        v = ((v + u) | (v - u)) & full
    # Each zero bit left in v marks one position of a in the common subsequence.
    return len(a) - v.bit_count()


def _rouge_from_tokens(prediction: list[str], reference: list[str]) -> dict[str, float]:
    if prediction and reference:
        lcs = lcs_length(reference, prediction)
        rouge_l = _fmeasure(lcs / len(prediction), lcs / len(reference))
    else:
        rouge_l = 0.0
    return {
        "rouge1": _ngram_fmeasure(prediction, reference, 1),
        "rouge2": _ngram_fmeasure(prediction, reference, 2),
        "rougeL": rouge_l,
    }


def rouge_scores(prediction: str, reference: str, *, stemmer: bool = True, language: str = AUTO) -> dict[str, float]:
    """ROUGE-1, ROUGE-2 and ROUGE-L F-measures, as ``rouge-score`` computes them on Unicode words.

    Parameters
    ----------
    prediction
        The model's response.
    reference
        The expected answer.
    stemmer
        Stem words over three characters before matching (rouge-score's ``use_stemmer``).
    language
        ISO 639-1 code choosing the stemmer, or ``"auto"`` (:func:`pair_language`).

    Returns
    -------
    dict[str, float]
        ``{"rouge1": ..., "rouge2": ..., "rougeL": ...}``, each in 0..1.

    Raises
    ------
    ValueError
        If either text is empty or blank.

    Examples
    --------
    >>> rouge_scores("The cat sat on the mat.", "the cat sat on the mat")
    {'rouge1': 1.0, 'rouge2': 1.0, 'rougeL': 1.0}
    >>> {k: round(v, 3) for k, v in rouge_scores("the cat was sitting", "a cat sat").items()}
    {'rouge1': 0.286, 'rouge2': 0.0, 'rougeL': 0.286}
    >>> round(rouge_scores("São é permitido levar o portátil", "Não é permitido levar o portátil")["rouge1"], 4)
    0.8333
    """
    _check_texts(prediction, reference)
    lang = pair_language(prediction, reference, language)
    return _rouge_from_tokens(rouge_tokens(prediction, stemmer, lang), rouge_tokens(reference, stemmer, lang))


@functools.cache
def _bleu(tokenize: str = "13a") -> Any:
    from sacrebleu.metrics import BLEU

    # Effective order: a short sentence without any 4-gram match still gets a non-zero score, as
    # sacrebleu.sentence_bleu does. One object, reused: building it per call costs 10%.
    return BLEU(effective_order=True, tokenize=tokenize)


def _bleu_for(language: str) -> Any:
    # 13a (sacrebleu's default, ASCII punctuation) keeps English scores as they always were; "intl"
    # splits every Unicode punctuation mark, which other languages' quotes and ellipses need.
    return _bleu("13a" if language == "en" else "intl")


def bleu_score(prediction: str, reference: str, *, language: str = AUTO) -> float:
    """Sentence BLEU of ``prediction`` against one ``reference`` (sacrebleu, 0..1).

    >>> bleu_score("the cat sat on the mat", "the cat sat on the mat")
    1.0
    >>> bleu_score("completely different words", "the cat sat on the mat")
    0.0

    Unlike ROUGE and METEOR, BLEU is case- and punctuation-sensitive (sacrebleu's default):

    >>> round(bleu_score("The cat sat on the mat.", "the cat sat on the mat"), 2)
    0.61
    """
    _check_texts(prediction, reference)
    return _bleu_value(_bleu_for(pair_language(prediction, reference, language)), prediction, reference)


def _bleu_value(bleu: Any, prediction: str, reference: str) -> float:
    # sacrebleu's exp/log arithmetic gives 100.00000000000004 for identical texts; clamp so that a
    # perfect score is exactly 1.0 and never above.
    return min(1.0, max(0.0, float(bleu.sentence_score(prediction, [reference]).score) / 100.0))


class _NoSynonyms:
    """WordNet stand-in without synsets: NLTK's METEOR then matches exact words and stems only."""

    def synsets(self, word: str) -> list[Any]:
        return []


class _CachedWordNet:
    """WordNet reader whose ``synsets`` (all METEOR calls) is memoised per word."""

    def __init__(self, reader: Any) -> None:
        self._synsets = functools.lru_cache(maxsize=100_000)(reader.synsets)

    def synsets(self, word: str) -> list[Any]:
        return self._synsets(word)  # type: ignore[no-any-return]


def _why_unusable(exc: BaseException) -> str:
    text = str(exc)
    if "Refused" in text:
        return "NLTK refuses it: writable by, or owned by, another account; fix with chmod -R go-w"
    if isinstance(exc, LookupError):
        return "no corpora/wordnet there"
    # NLTK's messages are framed by lines of asterisks: keep the first line that says something.
    return next((line.strip() for line in text.splitlines() if any(c.isalnum() for c in line)), type(exc).__name__)


@functools.lru_cache(maxsize=8)
def _load_wordnet(nltk_data: Path) -> Any | None:
    """WordNet from ``nltk_data`` (folder ``corpora/wordnet`` or ``corpora/wordnet.zip``), else None.

    Cached per folder: loading reads about 30 MB (1-3 s), once per process.
    """
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    folder = str(nltk_data)
    # NLTK (3.9+) only opens corpus files under its data path (nltk.data.path, NLTK_DATA), so the
    # folder joins that list for the life of the process; appending leaves other users' entries.
    if folder not in nltk.data.path:
        nltk.data.path.append(folder)
    try:
        # nltk.data.find, not a plain path: it finds wordnet.zip too, and applies NLTK's refusal of
        # corpus files that another account could have written.
        root = nltk.data.find("corpora/wordnet", paths=[folder])
        with warnings.catch_warnings():
            # "multilingual functions are not available": no Open Multilingual Wordnet, not needed.
            warnings.simplefilter("ignore")
            reader = WordNetCorpusReader(root, None)
        # A lookup reads the data and exception files too, so a broken install fails here once,
        # not on every event.
        reader.synsets("dogs")
    except (LookupError, OSError, ValueError, AssertionError) as exc:
        logger.warning(
            "WordNet not usable in %s (%s); METEOR falls back to %r (exact and stem matches only). "
            "Run scripts/wordnet.sh to install it.",
            nltk_data,
            _why_unusable(exc),
            METEOR_EXACT,
            extra={"nltk_data": folder},
        )
        return None
    return _CachedWordNet(reader)


def wordnet_available(nltk_data: Path) -> bool:
    """Whether WordNet loads from ``nltk_data`` (the answer is cached per folder for the process).

    >>> wordnet_available(Path("/nonexistent"))
    False
    """
    return _load_wordnet(Path(nltk_data).expanduser().resolve()) is not None


def _default_nltk_data() -> Path:
    from atalaia.settings import get_settings

    path = get_settings().nltk_data
    assert path is not None  # Settings always resolves it
    return path


@functools.cache
def _meteor_tokenize() -> Callable[[str], list[str]]:
    # NLTK's word tokenizer without the sentence splitter: word_tokenize() needs the "punkt" data,
    # which is not installed; per-sentence splitting changes nothing for METEOR's unigrams.
    from nltk.tokenize import NLTKWordTokenizer

    return NLTKWordTokenizer().tokenize  # type: ignore[no-any-return]


def _unicode_meteor_tokens(text: str) -> list[str]:
    return _METEOR_TOKEN.findall(unicodedata.normalize("NFC", text))


class _Meteor:
    """METEOR with WordNet when it loads from ``nltk_data``, else the exact+stem fallback.

    WordNet's synonyms are English: a pair in another language is scored with exact and stem
    matches (its own stemmer) and named ``meteor_exact``.
    """

    def __init__(self, nltk_data: Path) -> None:
        wordnet = _load_wordnet(Path(nltk_data).expanduser().resolve())
        self.name = METEOR if wordnet is not None else METEOR_EXACT
        self._wordnet = wordnet if wordnet is not None else _NoSynonyms()
        self._tokenize = _meteor_tokenize()

    def name_for(self, language: str) -> str:
        """Metric name of a pair in ``language``."""
        return self.name if language == "en" else METEOR_EXACT

    def __call__(self, prediction: str, reference: str, language: str = "en") -> float:
        from nltk.translate.meteor_score import single_meteor_score

        if language == "en":
            tokenize, wordnet = self._tokenize, self._wordnet
        else:
            tokenize, wordnet = _unicode_meteor_tokens, _NoSynonyms()
        return float(
            single_meteor_score(
                tokenize(reference),
                tokenize(prediction),
                stemmer=_CachedStemmer(language),
                wordnet=wordnet,
            )
        )


@functools.lru_cache(maxsize=8)
def _meteor_for(nltk_data: Path) -> _Meteor:
    return _Meteor(nltk_data)


def meteor_score(
    prediction: str, reference: str, nltk_data: Path | None = None, *, language: str = AUTO
) -> tuple[str, float]:
    """METEOR of ``prediction`` against ``reference``, with the name of the variant computed.

    Parameters
    ----------
    prediction, reference
        The texts; tokenized with NLTK's word tokenizer (English) or into Unicode words and
        punctuation (other languages), and lower-cased.
    nltk_data
        Folder holding ``corpora/wordnet``; ``None`` uses ``ATALAIA_NLTK_DATA`` (default
        ``~/.cache/atalaia/nltk_data``).
    language
        ISO 639-1 code choosing the stemmer, or ``"auto"`` (:func:`pair_language`).

    Returns
    -------
    tuple[str, float]
        ``("meteor", value)`` for an English pair when WordNet is available, else
        ``("meteor_exact", value)``.

    Examples
    --------
    METEOR stays just below 1 for identical texts (its fragmentation penalty is never 0):

    >>> name, value = meteor_score("the cat sat on the mat", "the cat sat on the mat", Path("/nonexistent"))
    >>> name, round(value, 4)
    ('meteor_exact', 0.9977)
    """
    _check_texts(prediction, reference)
    meteor = _meteor_for(Path(nltk_data) if nltk_data is not None else _default_nltk_data())
    lang = pair_language(prediction, reference, language)
    return meteor.name_for(lang), meteor(prediction, reference, lang)


class TextOverlapScorer:
    """All text-overlap metrics of a (response, reference) pair; build one per worker.

    Parameters
    ----------
    nltk_data
        Folder holding WordNet (``corpora/wordnet``); ``None`` uses ``ATALAIA_NLTK_DATA``. WordNet is
        loaded here, once, so the first event is not slow; without it METEOR is ``meteor_exact``.
    rouge_stemmer
        Stem words for ROUGE (rouge-score's ``use_stemmer``), with the pair's language's stemmer.
    language
        ``"auto"`` detects each pair's language (:func:`pair_language`); an ISO 639-1 code fixes it
        (``ATALAIA_TEXT_LANGUAGE``).
    fallback_language
        The language of a pair in which nothing points to one (a number, a single word).

    Attributes
    ----------
    meteor_name : str
        ``"meteor"`` or ``"meteor_exact"``: the METEOR key of English results (results in other
        languages always use ``"meteor_exact"``).
    metric_names : tuple[str, ...]
        Keys of every English result, in order.

    Examples
    --------
    >>> scorer = TextOverlapScorer(Path("/nonexistent"))
    >>> scorer.metric_names
    ('rouge1', 'rouge2', 'rougeL', 'bleu', 'meteor_exact')
    >>> {k: round(v, 2) for k, v in scorer.score("the cat sat on the mat", "the cat sat on the mat").items()}
    {'rouge1': 1.0, 'rouge2': 1.0, 'rougeL': 1.0, 'bleu': 1.0, 'meteor_exact': 1.0}
    """

    def __init__(
        self,
        nltk_data: Path | None = None,
        *,
        rouge_stemmer: bool = True,
        language: str = AUTO,
        fallback_language: str = DEFAULT_LANGUAGE,
    ) -> None:
        self._meteor = _meteor_for(Path(nltk_data) if nltk_data is not None else _default_nltk_data())
        self._rouge_stemmer = rouge_stemmer
        self.language = language
        self.fallback_language = fallback_language
        self.meteor_name: str = self._meteor.name
        self.metric_names: tuple[str, ...] = (*ROUGE_METRICS, "bleu", self.meteor_name)

    def score(self, prediction: str, reference: str) -> dict[str, float]:
        """ROUGE-1/2/L, BLEU and METEOR (or ``meteor_exact``) of one pair, each in 0..1.

        Raises
        ------
        ValueError
            ``"empty prediction"`` or ``"empty reference"`` for an empty or blank text.
        """
        return self.score_with_language(prediction, reference)[1]

    def score_with_language(
        self, prediction: str, reference: str, *, meteor: bool = True
    ) -> tuple[str, dict[str, float]]:
        """The pair's language (ISO 639-1) and its scores, as :meth:`score`; ``meteor=False``
        leaves METEOR out (it costs more than ROUGE and BLEU together; the worker samples it).

        >>> lang, scores = TextOverlapScorer(Path("/nonexistent")).score_with_language(
        ...     "O prazo é de dez dias úteis", "O prazo é de três dias úteis", meteor=False)
        >>> lang, round(scores["rouge1"], 4), round(6 / 7, 4), sorted(scores)
        ('pt', 0.8571, 0.8571, ['bleu', 'rouge1', 'rouge2', 'rougeL'])
        """
        _check_texts(prediction, reference)
        lang = pair_language(prediction, reference, self.language, self.fallback_language)
        stem = self._rouge_stemmer
        scores = _rouge_from_tokens(rouge_tokens(prediction, stem, lang), rouge_tokens(reference, stem, lang))
        scores["bleu"] = _bleu_value(_bleu_for(lang), prediction, reference)
        if meteor:
            scores[self._meteor.name_for(lang)] = self._meteor(prediction, reference, lang)
        return lang, scores

    def meteor_with_language(self, prediction: str, reference: str) -> tuple[str, str, float]:
        """The pair's language, the METEOR variant's name and its value (what :meth:`score` adds
        to ROUGE and BLEU).

        >>> TextOverlapScorer(Path("/nonexistent")).meteor_with_language("the cat sat", "the cat sat")[:2]
        ('en', 'meteor_exact')
        """
        _check_texts(prediction, reference)
        lang = pair_language(prediction, reference, self.language, self.fallback_language)
        return lang, self._meteor.name_for(lang), self._meteor(prediction, reference, lang)

    def score_batch(self, predictions: Sequence[str], references: Sequence[str]) -> list[dict[str, float]]:
        """:meth:`score` of each pair, in order.

        All pairs are checked before any is scored: an empty text raises ``ValueError`` naming its
        index, and the caller can score that batch pair by pair to keep the others.
        """
        if len(predictions) != len(references):
            raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
        for i, (prediction, reference) in enumerate(zip(predictions, references, strict=True)):
            try:
                _check_texts(prediction, reference)
            except ValueError as exc:
                raise ValueError(f"{exc} at index {i}") from None
        return [self.score(p, r) for p, r in zip(predictions, references, strict=True)]
