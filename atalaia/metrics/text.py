"""Text-overlap metrics of a response against a reference answer: ROUGE, BLEU and METEOR.

All scores are in 0..1 (BLEU is rescaled from sacrebleu's 0..100) so that alert thresholds read
the same for every metric.

- **ROUGE** (``rouge1``, ``rouge2``, ``rougeL``, F-measure, Porter stemmer): the values of Google's
  ``rouge-score`` package, computed here with the same tokenizer and formulas but with a cached
  stemmer and a bit-parallel LCS, about 3x faster than ``rouge_scorer.RougeScorer`` (the tests
  check both agree exactly). Like rouge-score, tokens are ASCII letters and digits only: text in
  other scripts scores 0, and accented letters split words.
- **BLEU** (``bleu``): sacrebleu's sentence BLEU (13a tokenizer, exponential smoothing, effective
  order), divided by 100.
- **METEOR**: NLTK's implementation. With WordNet (``scripts/wordnet.sh`` installs it under
  ``ATALAIA_NLTK_DATA``) the metric is ``meteor``: exact, stem and synonym matches. Without it the
  metric is named ``meteor_exact``: the same formula with exact and stem matches only, which scores
  lower whenever the texts use synonyms, so it is never stored under the ``meteor`` name.

Heavy imports (nltk pulls in scipy) happen on first use, not at import.
"""

from __future__ import annotations

import functools
import logging
import re
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

METEOR = "meteor"
METEOR_EXACT = "meteor_exact"
ROUGE_METRICS = ("rouge1", "rouge2", "rougeL")

# rouge-score's tokenizer (rouge_score/tokenize.py), reproduced so that stems can be cached.
_NON_ALPHANUM = re.compile(r"[^a-z0-9]+")
_SPACES = re.compile(r"\s+")
_VALID_TOKEN = re.compile(r"^[a-z0-9]+$")

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


@functools.cache
def _cached_stem() -> Callable[[str], str]:
    """NLTK's Porter stemmer (the one rouge-score and METEOR use) behind an LRU cache, shared."""
    from nltk.stem.porter import PorterStemmer

    return functools.lru_cache(maxsize=_STEM_CACHE_SIZE)(PorterStemmer().stem)


class _CachedStemmer:
    """``nltk.stem.api.StemmerI`` look-alike over the shared cache, for METEOR."""

    def __init__(self) -> None:
        self._stem = _cached_stem()

    def stem(self, token: str) -> str:
        return self._stem(token)


def rouge_tokens(text: str, stemmer: bool = True) -> list[str]:
    """Tokens as rouge-score makes them: lower-cased ASCII alphanumerics, stems of words over 3 chars.

    >>> rouge_tokens("The banks' capital-requirements, 2026!")
    ['the', 'bank', 'capit', 'requir', '2026']
    >>> rouge_tokens("The banks", stemmer=False)
    ['the', 'banks']
    """
    tokens = _SPACES.split(_NON_ALPHANUM.sub(" ", text.lower()))
    if stemmer:
        stem = _cached_stem()
        tokens = [stem(t) if len(t) > 3 else t for t in tokens]
    return [t for t in tokens if _VALID_TOKEN.match(t)]


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


def rouge_scores(prediction: str, reference: str, *, stemmer: bool = True) -> dict[str, float]:
    """ROUGE-1, ROUGE-2 and ROUGE-L F-measures, as ``rouge-score`` computes them.

    Parameters
    ----------
    prediction
        The model's response.
    reference
        The expected answer.
    stemmer
        Porter-stem words over three characters before matching (rouge-score's ``use_stemmer``).

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
    """
    _check_texts(prediction, reference)
    return _rouge_from_tokens(rouge_tokens(prediction, stemmer), rouge_tokens(reference, stemmer))


@functools.cache
def _bleu() -> Any:
    from sacrebleu.metrics import BLEU

    # Effective order: a short sentence without any 4-gram match still gets a non-zero score, as
    # sacrebleu.sentence_bleu does. One object, reused: building it per call costs 10%.
    return BLEU(effective_order=True)


def bleu_score(prediction: str, reference: str) -> float:
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
    return _bleu_value(_bleu(), prediction, reference)


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


class _Meteor:
    """METEOR with WordNet when it loads from ``nltk_data``, else the exact+stem fallback."""

    def __init__(self, nltk_data: Path) -> None:
        wordnet = _load_wordnet(Path(nltk_data).expanduser().resolve())
        self.name = METEOR if wordnet is not None else METEOR_EXACT
        self._wordnet = wordnet if wordnet is not None else _NoSynonyms()
        self._stemmer = _CachedStemmer()
        self._tokenize = _meteor_tokenize()

    def __call__(self, prediction: str, reference: str) -> float:
        from nltk.translate.meteor_score import single_meteor_score

        return float(
            single_meteor_score(
                self._tokenize(reference),
                self._tokenize(prediction),
                stemmer=self._stemmer,
                wordnet=self._wordnet,
            )
        )


@functools.lru_cache(maxsize=8)
def _meteor_for(nltk_data: Path) -> _Meteor:
    return _Meteor(nltk_data)


def meteor_score(prediction: str, reference: str, nltk_data: Path | None = None) -> tuple[str, float]:
    """METEOR of ``prediction`` against ``reference``, with the name of the variant computed.

    Parameters
    ----------
    prediction, reference
        The texts; tokenized with NLTK's word tokenizer and lower-cased.
    nltk_data
        Folder holding ``corpora/wordnet``; ``None`` uses ``ATALAIA_NLTK_DATA`` (default
        ``~/.cache/atalaia/nltk_data``).

    Returns
    -------
    tuple[str, float]
        ``("meteor", value)`` when WordNet is available, else ``("meteor_exact", value)``.

    Examples
    --------
    METEOR stays just below 1 for identical texts (its fragmentation penalty is never 0):

    >>> name, value = meteor_score("the cat sat on the mat", "the cat sat on the mat", Path("/nonexistent"))
    >>> name, round(value, 4)
    ('meteor_exact', 0.9977)
    """
    _check_texts(prediction, reference)
    meteor = _meteor_for(Path(nltk_data) if nltk_data is not None else _default_nltk_data())
    return meteor.name, meteor(prediction, reference)


class TextOverlapScorer:
    """All text-overlap metrics of a (response, reference) pair; build one per worker.

    Parameters
    ----------
    nltk_data
        Folder holding WordNet (``corpora/wordnet``); ``None`` uses ``ATALAIA_NLTK_DATA``. WordNet is
        loaded here, once, so the first event is not slow; without it METEOR is ``meteor_exact``.
    rouge_stemmer
        Porter-stem words for ROUGE (rouge-score's ``use_stemmer``).

    Attributes
    ----------
    meteor_name : str
        ``"meteor"`` or ``"meteor_exact"``: the METEOR key of every result.
    metric_names : tuple[str, ...]
        Keys of every result, in order.

    Examples
    --------
    >>> scorer = TextOverlapScorer(Path("/nonexistent"))
    >>> scorer.metric_names
    ('rouge1', 'rouge2', 'rougeL', 'bleu', 'meteor_exact')
    >>> {k: round(v, 2) for k, v in scorer.score("the cat sat on the mat", "the cat sat on the mat").items()}
    {'rouge1': 1.0, 'rouge2': 1.0, 'rougeL': 1.0, 'bleu': 1.0, 'meteor_exact': 1.0}
    """

    def __init__(self, nltk_data: Path | None = None, *, rouge_stemmer: bool = True) -> None:
        self._meteor = _meteor_for(Path(nltk_data) if nltk_data is not None else _default_nltk_data())
        self._rouge_stemmer = rouge_stemmer
        self._bleu = _bleu()
        self.meteor_name: str = self._meteor.name
        self.metric_names: tuple[str, ...] = (*ROUGE_METRICS, "bleu", self.meteor_name)

    def score(self, prediction: str, reference: str) -> dict[str, float]:
        """ROUGE-1/2/L, BLEU and METEOR (or ``meteor_exact``) of one pair, each in 0..1.

        Raises
        ------
        ValueError
            ``"empty prediction"`` or ``"empty reference"`` for an empty or blank text.
        """
        _check_texts(prediction, reference)
        scores = _rouge_from_tokens(
            rouge_tokens(prediction, self._rouge_stemmer), rouge_tokens(reference, self._rouge_stemmer)
        )
        scores["bleu"] = _bleu_value(self._bleu, prediction, reference)
        scores[self.meteor_name] = self._meteor(prediction, reference)
        return scores

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
