"""The filter corrections pass before they train the model (issue 15: feedback cannot poison unseen).

Users' corrected answers are the one training source anyone with a key can write. After the
per-caller and per-subject caps (:func:`retrain.dataset.cap_feedback`), :func:`filter_feedback`
rejects a correction, with one reason each, when its answer

- ``too_short`` / ``too_long``: has fewer than ``ATALAIA_FEEDBACK_MIN_ANSWER_WORDS`` words or more
  than ``ATALAIA_DATASET_MAX_ANSWER_WORDS`` ("no", "wrong." teach nothing; a wall of text is not an
  answer);
- ``toxic``: scores above ``ATALAIA_FEEDBACK_MAX_TOXICITY`` with the project's toxicity scorer
  (:func:`atalaia.metrics.toxicity.build_toxicity_scorer`, the same one that scores responses);
- ``pii``: holds personal data (:func:`atalaia.redaction.redact_text`'s detectors) other than the
  values the reference texts publish (the handbook's and QA file's contact addresses), so the model
  is never taught to say someone's phone number while it may still learn the service desk's e-mail;
- ``near_duplicate``: is a near copy of an answer kept before it (MinHash over character 5-gram
  shingles of the normalised answer, confirmed by the exact Jaccard similarity reaching
  ``ATALAIA_FEEDBACK_NEAR_DUPLICATE``): a flood of one claim in many wordings counts once;
- ``outlier``: answers a question that the reference QA file also answers, but shares almost
  nothing with the reference answer (ROUGE-L F-measure below ``ATALAIA_FEEDBACK_OUTLIER_MIN_ROUGE``).
  A correction that rephrases the reference passes; one that replaces it with something else does
  not. Questions the references do not cover are not judged.

Checks run in that order (cheap first, and a rejected answer never blocks a later one as its
"original"); the input order (newest first) decides which near duplicate stays. Each numeric
threshold set to 0 turns its check off.

Examples
--------
>>> leave = "How many days of annual leave do I get?"
>>> refs = [(leave, "Employees get 30 days of paid leave a year.")]
>>> pairs = [
...     {"id": "fb-1", "question": leave.lower(), "answer": "You get 30 days of paid leave a year."},
...     {"id": "fb-2", "question": leave, "answer": "Wire BRL 900 to account 12 to unlock."},
...     {"id": "fb-3", "question": "Who approves travel?", "answer": "ok"},
...     {"id": "fb-4", "question": "Who approves travel?", "answer": "Your manager approves travel in the portal."},
...     {"id": "fb-5", "question": "Who signs travel?", "answer": "Your manager approves travel in the portal!"},
... ]
>>> result = filter_feedback(pairs, FeedbackFilter(max_toxicity=0), references=refs)
>>> [p["id"] for p in result.kept], [(r.id, r.reason) for r in result.rejected]
(['fb-1', 'fb-4'], [('fb-3', 'too_short'), ('fb-5', 'near_duplicate'), ('fb-2', 'outlier')])
>>> result.counts
{'too_short': 1, 'too_long': 0, 'toxic': 0, 'pii': 0, 'near_duplicate': 1, 'outlier': 1}
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from atalaia.redaction import PLACEHOLDERS, redact_text

if TYPE_CHECKING:  # pragma: no cover - typing only
    from atalaia.settings import Settings

logger = logging.getLogger(__name__)

#: Rejection reasons, in the order the checks run.
REASONS = ("too_short", "too_long", "toxic", "pii", "near_duplicate", "outlier")

_PUNCT = re.compile(r"[^\w\s]+")
_SHINGLE = 5
_NUM_PERM = 64
_BANDS = 16  # 16 bands of 4 rows: pairs at Jaccard 0.8 become candidates with probability > 0.999
_MERSENNE = (1 << 61) - 1
_PLACEHOLDER = re.compile("|".join(re.escape(p) for p in PLACEHOLDERS.values()))


class _Scorer(Protocol):
    def score(self, texts: Sequence[str]) -> list[float]: ...


@dataclass(frozen=True)
class FeedbackFilter:
    """Thresholds of :func:`filter_feedback` (0 turns a numeric check off).

    Attributes
    ----------
    min_answer_words, max_answer_words
        Length bounds of the corrected answer, in words.
    max_toxicity
        Highest toxicity score (0..1) an answer may have.
    reject_pii
        Reject answers holding personal data that the references do not publish.
    near_duplicate
        Jaccard similarity (0..1) of shingle sets at and above which an answer repeats a kept one.
    outlier_min_rouge
        Lowest ROUGE-L F-measure against the reference answer of the same question.
    """

    min_answer_words: int = 2
    max_answer_words: int = 80
    max_toxicity: float = 0.5
    reject_pii: bool = True
    near_duplicate: float = 0.8
    outlier_min_rouge: float = 0.1

    @classmethod
    def from_settings(cls, settings: Settings) -> FeedbackFilter:
        """The thresholds of ``ATALAIA_FEEDBACK_*`` (and ``ATALAIA_DATASET_MAX_ANSWER_WORDS``)."""
        return cls(
            min_answer_words=settings.feedback_min_answer_words,
            max_answer_words=settings.dataset_max_answer_words,
            max_toxicity=settings.feedback_max_toxicity,
            reject_pii=settings.feedback_reject_pii,
            near_duplicate=settings.feedback_near_duplicate,
            outlier_min_rouge=settings.feedback_outlier_min_rouge,
        )


@dataclass(frozen=True)
class Rejection:
    """One correction the filter dropped: its record ``id`` (``fb-<event id>``), why, and the
    evidence (a score, the kept answer it repeats, the PII kinds)."""

    id: str
    reason: str
    detail: str = ""

    def as_dict(self) -> dict[str, str]:
        """JSON form for the data set manifest."""
        return {"id": self.id, "reason": self.reason, "detail": self.detail}


@dataclass
class FilterResult:
    """What :func:`filter_feedback` kept (input order) and rejected (by check, then input order)."""

    kept: list[dict[str, str]]
    rejected: list[Rejection] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        """Rejections by reason, every reason present."""
        return {reason: sum(r.reason == reason for r in self.rejected) for reason in REASONS}


# --------------------------------------------------------------------------------------------------
# Text helpers


def normalise(text: str) -> str:
    """Lower case, punctuation removed, single spaces: what near duplicates are compared on.

    >>> normalise("  You get 30 DAYS, paid! ")
    'you get 30 days paid'
    """
    return " ".join(_PUNCT.sub(" ", text.lower()).split())


def shingles(text: str, k: int = _SHINGLE) -> set[str]:
    """Character ``k``-grams of the normalised text (the whole text when shorter).

    >>> sorted(shingles("Ab, cd!", k=3))
    [' cd', 'ab ', 'b c']
    """
    norm = normalise(text)
    if len(norm) <= k:
        return {norm} if norm else set()
    return {norm[i : i + k] for i in range(len(norm) - k + 1)}


def jaccard(a: set[str], b: set[str]) -> float:
    """``|a ∩ b| / |a ∪ b|`` (1.0 for two empty sets).

    >>> jaccard({"a", "b"}, {"b", "c"})
    0.3333333333333333
    """
    union = len(a | b)
    return len(a & b) / union if union else 1.0


def _hash64(shingle: str) -> int:
    return int.from_bytes(hashlib.blake2b(shingle.encode("utf-8"), digest_size=8).digest(), "big")


# Fixed permutations (a*x + b mod p): the same text always gets the same signature.
_PERMS = [
    (
        int.from_bytes(hashlib.blake2b(f"a{i}".encode(), digest_size=8).digest(), "big") % (_MERSENNE - 1) + 1,
        int.from_bytes(hashlib.blake2b(f"b{i}".encode(), digest_size=8).digest(), "big") % _MERSENNE,
    )
    for i in range(_NUM_PERM)
]


def minhash(shingle_set: Iterable[str]) -> tuple[int, ...]:
    """MinHash signature (64 values) of a shingle set; equal values estimate the Jaccard similarity.

    >>> minhash({"abcde"}) == minhash({"abcde"}), len(minhash({"abcde"}))
    (True, 64)
    """
    hashes = [_hash64(s) for s in shingle_set] or [0]
    return tuple(min((a * h + b) % _MERSENNE for h in hashes) for a, b in _PERMS)


class _NearDuplicateIndex:
    """Kept answers by MinHash band (locality-sensitive hashing); candidates confirmed exactly."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self._rows = _NUM_PERM // _BANDS
        self._buckets: dict[tuple[int, tuple[int, ...]], list[int]] = {}
        self._kept: list[tuple[str, set[str]]] = []

    def find(self, sh: set[str]) -> tuple[str, float] | None:
        """The id and similarity of a kept answer this one nearly repeats, or None."""
        signature = minhash(sh)
        seen: set[int] = set()
        best: tuple[str, float] | None = None
        for band in range(_BANDS):
            key = (band, signature[band * self._rows : (band + 1) * self._rows])
            for idx in self._buckets.get(key, ()):
                if idx in seen:
                    continue
                seen.add(idx)
                kept_id, kept_sh = self._kept[idx]
                sim = jaccard(sh, kept_sh)
                if sim >= self.threshold and (best is None or sim > best[1]):
                    best = (kept_id, sim)
        return best

    def add(self, record_id: str, sh: set[str]) -> None:
        """Remember a kept answer."""
        signature = minhash(sh)
        self._kept.append((record_id, sh))
        for band in range(_BANDS):
            key = (band, signature[band * self._rows : (band + 1) * self._rows])
            self._buckets.setdefault(key, []).append(len(self._kept) - 1)


def published_values(texts: Iterable[str]) -> set[str]:
    """Personal-data-shaped values that the reference texts themselves contain (published contacts).

    Each line is redacted; the redacted line is the original with some spans replaced by
    placeholders, so matching the original against the redacted line (placeholders turned into
    lazy groups) reads back exactly what each placeholder replaced.

    >>> sorted(published_values(["Write to hr@atalaia.example or call +55 11 3456-7890."]))
    ['+55 11 3456-7890', 'hr@atalaia.example']
    """
    values: set[str] = set()
    for text in texts:
        for line in text.splitlines():
            redacted, counts = redact_text(line)
            if not counts:
                continue
            parts = _PLACEHOLDER.split(redacted)
            pattern = "(.+?)".join(re.escape(p) for p in parts)
            found = re.fullmatch(pattern, line, flags=re.DOTALL)
            if found is not None:
                values.update(v.strip() for v in found.groups() if v.strip())
    return values


def pii_kinds(answer: str, published: set[str]) -> dict[str, int]:
    """Kinds of personal data in ``answer`` once the published values are set aside.

    >>> pii_kinds("Mail hr@atalaia.example, or me at ana@gmail.example", {"hr@atalaia.example"})
    {'email': 1}
    """
    for value in sorted(published, key=len, reverse=True):
        if value in answer:
            answer = answer.replace(value, " ")
    return redact_text(answer)[1]


def _question_key(question: str) -> frozenset[str]:
    return frozenset(normalise(question).split())


class _References:
    """Reference answers by question, matched exactly (normalised) or by word overlap >= 0.6."""

    MIN_WORD_JACCARD = 0.6

    def __init__(self, references: Iterable[tuple[str, str]]) -> None:
        self._exact: dict[str, str] = {}
        self._by_words: list[tuple[frozenset[str], str]] = []
        for question, answer in references:
            self._exact.setdefault(normalise(question), answer)
            self._by_words.append((_question_key(question), answer))

    def answer_for(self, question: str) -> str | None:
        exact = self._exact.get(normalise(question))
        if exact is not None:
            return exact
        words = _question_key(question)
        best, best_sim = None, self.MIN_WORD_JACCARD
        for ref_words, answer in self._by_words:
            union = len(words | ref_words)
            sim = len(words & ref_words) / union if union else 0.0
            if sim >= best_sim:
                best, best_sim = answer, sim
        return best


def _rouge_l(prediction: str, reference: str) -> float:
    from atalaia.metrics.text import rouge_scores

    if not prediction.strip() or not reference.strip():
        return 0.0
    return float(rouge_scores(prediction, reference)["rougeL"])


# --------------------------------------------------------------------------------------------------
# The filter


def filter_feedback(
    pairs: Sequence[dict[str, str]],
    config: FeedbackFilter,
    *,
    references: Iterable[tuple[str, str]] = (),
    published: Iterable[str] = (),
    scorer: _Scorer | None = None,
) -> FilterResult:
    """Drop corrections that should not train the model; see the module docstring.

    Parameters
    ----------
    pairs
        Corrections, newest first: ``{"id", "question", "answer", ...}``.
    config
        Thresholds.
    references
        ``(question, reference answer)`` pairs (the curated QA file) for the outlier check.
    published
        Reference texts (handbook, QA answers) whose personal-data-shaped values are public.
    scorer
        Toxicity scorer (``score(texts) -> list[float]``); required when ``max_toxicity`` > 0.

    Returns
    -------
    FilterResult
    """
    rejected: list[Rejection] = []
    candidates: list[dict[str, str]] = []
    for pair in pairs:
        words = len(" ".join((pair.get("answer") or "").split()).split())
        if words < config.min_answer_words:
            rejected.append(Rejection(pair["id"], "too_short", f"{words} words < {config.min_answer_words}"))
        elif config.max_answer_words and words > config.max_answer_words:
            rejected.append(Rejection(pair["id"], "too_long", f"{words} words > {config.max_answer_words}"))
        else:
            candidates.append(pair)

    if config.max_toxicity > 0 and candidates:
        if scorer is None:
            raise ValueError("filter_feedback: max_toxicity is set but no toxicity scorer was given")
        scores = scorer.score([p["answer"] for p in candidates])
        survivors = []
        for pair, score in zip(candidates, scores, strict=True):
            if score > config.max_toxicity:
                rejected.append(Rejection(pair["id"], "toxic", f"toxicity {score:.3f} > {config.max_toxicity}"))
            else:
                survivors.append(pair)
        candidates = survivors

    if config.reject_pii:
        public = published_values(published)
        survivors = []
        for pair in candidates:
            kinds = pii_kinds(pair["answer"], public)
            if kinds:
                rejected.append(Rejection(pair["id"], "pii", ",".join(sorted(kinds))))
            else:
                survivors.append(pair)
        candidates = survivors

    if config.near_duplicate > 0:
        index = _NearDuplicateIndex(config.near_duplicate)
        survivors = []
        for pair in candidates:
            sh = shingles(pair["answer"])
            match = index.find(sh)
            if match is not None:
                rejected.append(Rejection(pair["id"], "near_duplicate", f"{match[0]} (jaccard {match[1]:.2f})"))
            else:
                index.add(pair["id"], sh)
                survivors.append(pair)
        candidates = survivors

    refs = _References(references)
    if config.outlier_min_rouge > 0:
        survivors = []
        for pair in candidates:
            reference = refs.answer_for(pair.get("question") or "")
            if reference is not None:
                rouge = _rouge_l(pair["answer"], reference)
                if rouge < config.outlier_min_rouge:
                    rejected.append(
                        Rejection(pair["id"], "outlier", f"rouge-l {rouge:.3f} < {config.outlier_min_rouge}")
                    )
                    continue
            survivors.append(pair)
        candidates = survivors

    result = FilterResult(kept=candidates, rejected=rejected)
    if rejected:
        logger.warning(
            "feedback filtered before training",
            extra={"kept": len(candidates), **{f"rejected_{k}": v for k, v in result.counts.items() if v}},
        )
    return result


def build_filter_inputs(settings: Settings) -> dict[str, Any]:
    """The references, published texts and toxicity scorer :func:`filter_feedback` needs, from
    ``ATALAIA_QA_TRAIN_FILE``, ``ATALAIA_REGULATIONS_DIR`` and the toxicity settings (the scorer is
    loaded only when the toxicity check is on)."""
    from pathlib import Path

    from retrain.dataset import load_qa

    refs: list[tuple[str, str]] = []
    texts: list[str] = []
    if settings.qa_train_file is not None and Path(settings.qa_train_file).is_file():
        for item in load_qa(settings.qa_train_file):
            refs.append((item.question, item.answer))
            texts.append(item.answer)
    if settings.regulations_dir is not None and Path(settings.regulations_dir).is_dir():
        texts.extend(p.read_text(encoding="utf-8") for p in sorted(Path(settings.regulations_dir).glob("*.md")))
    scorer = None
    if settings.feedback_max_toxicity > 0:
        from atalaia.metrics.toxicity import build_toxicity_scorer

        scorer = build_toxicity_scorer(settings)
    return {"references": refs, "published": texts, "scorer": scorer}
