"""Step 1 of a retraining run: build a versioned, cleaned question/answer data set.

Sources, in order of precedence when two give the same question:

1. **feedback** with a corrected answer (``feedback`` joined to ``inference_events`` for the
   question: the last user message), newest first; personal data is redacted
   (:func:`atalaia.redaction.redact_text`) from both question and answer, since users type it;
2. **QA pairs** from ``data/qa/train.jsonl`` (curated; ``ATALAIA_QA_TRAIN_FILE``);
3. **regulation pairs** derived from ``data/regulations`` (:func:`regulation_pairs`): one per
   sentence of every clause, asking about the sentence's key words and answered by the sentence.
   The handbook's facts (amounts, deadlines, form codes) are what the base model cannot know.

The handbook and the curated pairs are company documents, not personal data, and are not
redacted (that would erase the published phone numbers and aliases the assistant must know).

Cleaning: whitespace normalised; empty, too-short and too-long pairs dropped; duplicates (same
question after lower-casing and removing punctuation) dropped, keeping the higher-precedence
source. The split into train and validation is by a hash of the normalised question, so a
question stays on its side when the data grows. The holdout file (``data/qa/holdout.jsonl``) is
never read here: it is the evaluation set.

The result is written to ``<out_root>/<content_hash>/`` (``train.jsonl``, ``val.jsonl``,
``manifest.json``); the hash covers the records and the format, so the same data always gives the
same folder, and building it again is a no-op.

Examples
--------
>>> qa = normalise_question("  How many DAYS of leave?! ")
>>> qa
'how many days of leave'
>>> split_of("how many days of leave", val_fraction=0.5) in {"train", "val"}
True
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from atalaia.qa import load_qa, read_jsonl
from atalaia.redaction import redact_text
from retrain.feedback_filter import REASONS as FILTER_REASONS

if TYPE_CHECKING:  # pragma: no cover - typing only
    from sqlalchemy import Engine

    from atalaia.settings import Settings

logger = logging.getLogger(__name__)

#: Bumped when the records or their cleaning change, so that an old folder is never reused.
DATASET_FORMAT = 1
MANIFEST = "manifest.json"
SOURCES = ("feedback", "qa", "regulations")

_SECTION_FILE = re.compile(r"^\d+-[\w-]+\.md$")
_CLAUSE = re.compile(r"^(?P<num>\d+\.\d+)\s+(?P<text>.*)$")
# A sentence ends at . ! ? or ; followed by a space and an upper-case letter or digit; decimal
# points ("1.5") and abbreviations followed by lower case ("e.g. a") do not split.
_SENTENCE_END = re.compile(r"(?<=[.!?;])\s+(?=[A-Z0-9(\"'])")
_PUNCT = re.compile(r"[^\w\s]+")
_WORD = re.compile(r"[A-Za-zÀ-ÿ][\w'-]*")
_STOPWORDS = frozenset(
    """a about above after again against all also an and any are as at be because been before being
    below between both but by can could did do does doing down during each either every few for from
    further had has have having he her here hers him his how i if in into is it its itself just may
    me might more most must my no nor not of off on once only or other our out over own per same
    shall she should so some such than that the their them then there these they this those through
    to too under until up upon very was we were what when where which while who whom why will with
    within without would you your employee employees company atalaia""".split()
)


@dataclass(frozen=True)
class DatasetVersion:
    """A built data set on disk.

    Attributes
    ----------
    path
        ``<out_root>/<content_hash>``, holding ``train.jsonl``, ``val.jsonl`` and ``manifest.json``.
    content_hash
        SHA-256 (hex) of the format version and every record, in order: the data set's version.
    n_train, n_val
        Records in each split.
    n_feedback, n_regulations, n_qa
        Kept records (both splits) from feedback, from the handbook and from the curated QA file.
    dropped
        Records dropped by reason: ``empty``, ``too_short``, ``too_long``, ``duplicate``, and the
        feedback caps ``caller_cap`` / ``subject_cap``.
    redactions
        Personal data values replaced in feedback, by kind (``email``, ``phone``, ...).
    feedback_rejected
        Corrections the feedback filter (:mod:`retrain.feedback_filter`) rejected, by reason. The
        manifest lists each one (``feedback_rejections``: id, reason, detail) and the ids of the
        corrections used (``feedback_used``).
    """

    path: Path
    content_hash: str
    n_train: int
    n_val: int
    n_feedback: int
    n_regulations: int
    dropped: dict[str, int]
    n_qa: int = 0
    redactions: dict[str, int] = field(default_factory=dict)
    feedback_rejected: dict[str, int] = field(default_factory=dict)

    @property
    def train_path(self) -> Path:
        """The training split (JSON Lines)."""
        return self.path / "train.jsonl"

    @property
    def val_path(self) -> Path:
        """The validation split (JSON Lines)."""
        return self.path / "val.jsonl"

    def records(self, split: str = "train") -> list[dict[str, Any]]:
        """The records of ``split`` (``"train"`` or ``"val"``)."""
        path = {"train": self.train_path, "val": self.val_path}[split]
        return read_jsonl(path)

    @classmethod
    def load(cls, path: Path) -> DatasetVersion:
        """Read a data set folder back from its manifest."""
        m = json.loads((Path(path) / MANIFEST).read_text(encoding="utf-8"))
        return cls(
            path=Path(path),
            content_hash=m["content_hash"],
            n_train=m["n_train"],
            n_val=m["n_val"],
            n_feedback=m["n_feedback"],
            n_regulations=m["n_regulations"],
            dropped=dict(m["dropped"]),
            n_qa=m.get("n_qa", 0),
            redactions=dict(m.get("redactions", {})),
            feedback_rejected=dict(m.get("feedback_rejected", {})),
        )


# --------------------------------------------------------------------------------------------------
# Text helpers


def normalise_space(text: str) -> str:
    """Collapse runs of whitespace to one space and strip.

    >>> normalise_space(" a\\n\\t b ")
    'a b'
    """
    return " ".join(text.split())


def normalise_question(text: str) -> str:
    """The deduplication key of a question: lower case, no punctuation, single spaces."""
    return normalise_space(_PUNCT.sub(" ", text.lower()))


def split_of(key: str, val_fraction: float) -> str:
    """``"val"`` or ``"train"`` for a normalised question, stable across runs and machines.

    >>> split_of("anything", 0.0), split_of("anything", 1.0)
    ('train', 'val')
    """
    bucket = int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "val" if bucket < val_fraction else "train"


def split_sentences(text: str) -> list[str]:
    """Sentences of a clause (bullet lines become their own sentences).

    >>> split_sentences("Reports are due in 30 days. Late ones, e.g. after 90 days, are rejected.")
    ['Reports are due in 30 days.', 'Late ones, e.g. after 90 days, are rejected.']
    """
    out: list[str] = []
    for line in text.splitlines():
        line = line.strip().lstrip("-*• ").strip()
        if line:
            out.extend(s.strip() for s in _SENTENCE_END.split(line) if s.strip())
    return out


def key_words(sentence: str, title: str, limit: int = 6) -> list[str]:
    """Up to ``limit`` content words of ``sentence`` in order: no stop words, title words or repeats.

    >>> key_words("A receipt is required for every expense over BRL 50.", "Expense Reports")
    ['receipt', 'required', 'BRL']
    """
    skip = {w.lower() for w in _WORD.findall(title)} | _STOPWORDS
    # Singular title words too: "Expense Reports" should not make "expense" a key word.
    skip |= {w[:-1] for w in skip if w.endswith("s")}
    words: list[str] = []
    seen: set[str] = set()
    for word in _WORD.findall(sentence):
        low = word.lower()
        if low in skip or low in seen or len(low) < 3:
            continue
        seen.add(low)
        words.append(word)
        if len(words) == limit:
            break
    return words


def _sections(directory: Path) -> list[tuple[str, str, list[tuple[str, str]]]]:
    """``(slug, title, [(clause number, clause text)])`` of every handbook section file."""
    sections = []
    for path in sorted(p for p in Path(directory).iterdir() if p.is_file() and _SECTION_FILE.match(p.name)):
        title = slug = ""
        clauses: list[list[str]] = []
        for raw in path.read_text(encoding="utf-8").splitlines():
            line = raw.strip()
            if not line:
                continue
            if not title and line.startswith("# "):
                title = line[2:].strip()
            elif not slug and line.startswith("Section id:"):
                slug = line.split(":", 1)[1].strip()
            elif m := _CLAUSE.match(line):
                clauses.append([m["num"], m["text"]])
            elif clauses:
                clauses[-1][1] += "\n" + line
        sections.append((slug or path.stem, title or path.stem, [(c[0], c[1]) for c in clauses]))
    return sections


def regulation_pairs(directory: Path, *, min_words: int = 6) -> list[dict[str, str]]:
    """Question/answer pairs derived from the handbook: one per sentence of every clause.

    The question names the section and the sentence's key words ("What does the expense reports
    policy say about receipt, required, BRL?"), the answer is the sentence. Sentences shorter than
    ``min_words`` words are skipped (they carry no fact on their own).

    Parameters
    ----------
    directory
        Folder of ``NN-slug.md`` section files.
    min_words
        Shortest sentence kept.

    Returns
    -------
    list of dict
        ``{"id": "reg-<section>-<clause>-<n>", "question", "answer", "section"}`` in file order.
    """
    pairs = []
    for slug, title, clauses in _sections(directory):
        for num, text in clauses:
            for n, sentence in enumerate(split_sentences(text), start=1):
                if len(sentence.split()) < min_words:
                    continue
                words = key_words(sentence, title)
                if not words:
                    continue
                question = f"What does the {title.lower()} policy say about {', '.join(words)}?"
                pairs.append({"id": f"reg-{slug}-{num}-{n}", "question": question, "answer": sentence, "section": slug})
    return pairs


# --------------------------------------------------------------------------------------------------
# Feedback


def _question_of(messages: Any) -> str | None:
    """The last user message of a stored conversation."""
    if not isinstance(messages, list):
        return None
    for msg in reversed(messages):
        if isinstance(msg, dict) and msg.get("role") == "user" and isinstance(msg.get("content"), str):
            return str(msg["content"])
    return None


def _feedback_query(since: datetime | None, approved_only: bool = False) -> Any:
    """Corrections with their conversation. A correction rejected in review never trains; with
    ``approved_only`` (``ATALAIA_FEEDBACK_REVIEW``) only approved ones do, and ``since`` applies to
    the time of approval (a correction sent long ago and approved today is new data)."""
    from sqlalchemy import or_, select

    from atalaia.storage.tables import feedback, feedback_reviews, inference_events
    from retrain.review import has_answer

    review = feedback_reviews.c
    query = (
        select(
            feedback.c.event_id,
            feedback.c.ts,
            feedback.c.corrected_answer,
            feedback.c.caller,
            feedback.c.subject_id,
            inference_events.c.messages,
        )
        .select_from(
            feedback.join(inference_events, feedback.c.inference_event_id == inference_events.c.event_id).outerjoin(
                feedback_reviews, review.feedback_event_id == feedback.c.event_id
            )
        )
        .where(has_answer())
    )
    if approved_only:
        query = query.where(review.state == "approved")
        if since is not None:
            query = query.where(review.reviewed_at > since)
        return query
    query = query.where(or_(review.state.is_(None), review.state != "rejected"))
    if since is not None:
        query = query.where(feedback.c.ts > since)
    return query


def feedback_pairs(
    engine: Engine, since: datetime | None = None, *, approved_only: bool = False
) -> list[dict[str, str]]:
    """Corrected answers from feedback, with the question they answer, newest first.

    Feedback whose inference event is not (yet) stored is skipped: without it there is no question.

    Parameters
    ----------
    engine
        The project database.
    since
        Only feedback with ``ts`` after this time; ``None`` for all.
    approved_only
        Only corrections approved in review (``ATALAIA_FEEDBACK_REVIEW``); rejected ones are
        never returned.

    Returns
    -------
    list of dict
        ``{"id": "fb-<feedback event id>", "question", "answer"}`` (not yet redacted).
    """
    from atalaia.storage.tables import feedback

    with engine.connect() as conn:
        rows = conn.execute(
            _feedback_query(since, approved_only).order_by(feedback.c.ts.desc(), feedback.c.event_id)
        ).all()
    pairs = []
    for row in rows:
        question = _question_of(row.messages)
        if question is None:
            continue
        pairs.append(
            {
                "id": f"fb-{row.event_id}",
                "question": question,
                "answer": str(row.corrected_answer),
                "caller": row.caller or "",
                "subject_id": row.subject_id or "",
            }
        )
    return pairs


def cap_feedback(
    pairs: Sequence[dict[str, str]], max_per_caller: int, max_per_subject: int
) -> tuple[list[dict[str, str]], dict[str, int]]:
    """Keep at most ``max_per_caller`` corrections per caller and ``max_per_subject`` per end
    user (0: no cap), the first ones in ``pairs`` order (newest first), so that one service or one
    user flooding feedback cannot make up the training data. Corrections without a caller count
    as one caller (anonymous), and likewise for subjects.

    >>> flood = [{"id": f"f{i}", "caller": "bot", "subject_id": ""} for i in range(5)]
    >>> kept, dropped = cap_feedback(flood + [{"id": "ok", "caller": "app", "subject_id": "u1"}], 2, 0)
    >>> [p["id"] for p in kept], dropped
    (['f0', 'f1', 'ok'], {'caller_cap': 3, 'subject_cap': 0})
    """
    per_caller: dict[str, int] = {}
    per_subject: dict[str, int] = {}
    dropped = {"caller_cap": 0, "subject_cap": 0}
    kept = []
    for pair in pairs:
        caller, subject = pair.get("caller", ""), pair.get("subject_id", "")
        if max_per_caller and per_caller.get(caller, 0) >= max_per_caller:
            dropped["caller_cap"] += 1
            continue
        if max_per_subject and per_subject.get(subject, 0) >= max_per_subject:
            dropped["subject_cap"] += 1
            continue
        per_caller[caller] = per_caller.get(caller, 0) + 1
        per_subject[subject] = per_subject.get(subject, 0) + 1
        kept.append(pair)
    if dropped["caller_cap"] or dropped["subject_cap"]:
        logger.warning("feedback capped before training", extra=dropped | {"kept": len(kept)})
    return kept, dropped


def _filter_feedback(
    pairs: list[dict[str, str]], settings: Settings
) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """The corrections :func:`retrain.feedback_filter.filter_feedback` keeps, and its rejections."""
    if not pairs:
        return pairs, []
    from retrain.feedback_filter import FeedbackFilter, build_filter_inputs, filter_feedback

    # Why a lazy import: building the inputs may load the toxicity model; only when there is feedback.
    result = filter_feedback(pairs, FeedbackFilter.from_settings(settings), **build_filter_inputs(settings))
    return result.kept, [r.as_dict() for r in result.rejected]


def count_new_feedback(engine: Engine, since: datetime | None, *, approved_only: bool = False) -> int:
    """Feedback rows with a corrected answer (and a stored inference event) after ``since``.

    What :func:`build_dataset` would take from feedback; the scheduler compares it with its
    minimum of new data before starting a run.

    Parameters
    ----------
    engine
        The project database.
    since
        Count feedback with ``ts`` after this time; ``None`` counts all.
    approved_only
        Count only corrections approved in review, by time of approval.

    Returns
    -------
    int
    """
    from sqlalchemy import func, select

    with engine.connect() as conn:
        return int(
            conn.execute(
                select(func.count()).select_from(_feedback_query(since, approved_only).subquery())
            ).scalar_one()
        )


# --------------------------------------------------------------------------------------------------
# Cleaning and writing


@dataclass
class _Cleaner:
    min_question_chars: int
    max_question_chars: int
    min_answer_words: int
    max_answer_words: int
    dropped: dict[str, int] = field(default_factory=lambda: {"empty": 0, "too_short": 0, "too_long": 0, "duplicate": 0})
    redactions: dict[str, int] = field(default_factory=dict)
    seen: set[str] = field(default_factory=set)

    def add(self, pair: dict[str, str], source: str, *, redact: bool) -> dict[str, str] | None:
        question = normalise_space(pair.get("question") or "")
        answer = normalise_space(pair.get("answer") or "")
        if redact:
            question, q_counts = redact_text(question)
            answer, a_counts = redact_text(answer)
            for counts in (q_counts, a_counts):
                for kind, n in counts.items():
                    self.redactions[kind] = self.redactions.get(kind, 0) + n
        if not question or not answer:
            self.dropped["empty"] += 1
            return None
        if len(question) < self.min_question_chars or len(answer.split()) < self.min_answer_words:
            self.dropped["too_short"] += 1
            return None
        if len(question) > self.max_question_chars or len(answer.split()) > self.max_answer_words:
            self.dropped["too_long"] += 1
            return None
        key = normalise_question(question)
        if not key or key in self.seen:
            self.dropped["duplicate"] += 1
            return None
        self.seen.add(key)
        record = {"id": pair["id"], "source": source, "question": question, "answer": answer}
        if pair.get("section"):
            record["section"] = pair["section"]
        return record


def clean_pairs(
    sources: Sequence[tuple[str, Iterable[dict[str, str]], bool]],
    *,
    min_question_chars: int = 3,
    max_question_chars: int = 500,
    min_answer_words: int = 1,
    max_answer_words: int = 80,
) -> tuple[list[dict[str, str]], dict[str, int], dict[str, int]]:
    """Normalise, redact, length-filter and deduplicate pairs from several sources.

    Parameters
    ----------
    sources
        ``(source name, pairs, redact?)`` in order of precedence: a question seen in an earlier
        source drops the same question from later ones.
    min_question_chars, max_question_chars, min_answer_words, max_answer_words
        Length filter.

    Returns
    -------
    (records, dropped, redactions)
        Kept records (``id``, ``source``, ``question``, ``answer``, optional ``section``),
        dropped counts by reason, and redacted values by kind.

    Examples
    --------
    >>> recs, dropped, red = clean_pairs([
    ...     ("feedback", [{"id": "f1", "question": "How many days?", "answer": "Ask ana@b.example."}], True),
    ...     ("qa", [{"id": "q1", "question": "how many DAYS", "answer": "30."},
    ...             {"id": "q2", "question": "Hi", "answer": ""}], False),
    ... ])
    >>> [(r["id"], r["answer"]) for r in recs], dropped["duplicate"], dropped["empty"], red
    ([('f1', 'Ask [EMAIL].')], 1, 1, {'email': 1})
    """
    cleaner = _Cleaner(min_question_chars, max_question_chars, min_answer_words, max_answer_words)
    records = []
    for source, pairs, redact in sources:
        for pair in pairs:
            record = cleaner.add(pair, source, redact=redact)
            if record is not None:
                records.append(record)
    return records, cleaner.dropped, cleaner.redactions


def content_hash(train: Sequence[dict[str, Any]], val: Sequence[dict[str, Any]]) -> str:
    """SHA-256 of the format version and both splits' records, canonical JSON, in order.

    >>> content_hash([{"q": 1}], []) == content_hash([{"q": 1}], [])
    True
    >>> content_hash([{"q": 1}], []) == content_hash([], [{"q": 1}])
    False
    """
    h = hashlib.sha256(f"atalaia-dataset-format={DATASET_FORMAT}\n".encode())
    for name, records in (("train", train), ("val", val)):
        h.update(f"[{name}] {len(records)}\n".encode())
        for record in records:
            h.update(json.dumps(record, sort_keys=True, ensure_ascii=False).encode("utf-8") + b"\n")
    return h.hexdigest()


def _write_jsonl(path: Path, records: Sequence[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for record in records:
            fh.write(json.dumps(record, sort_keys=True, ensure_ascii=False) + "\n")


def build_dataset(
    engine: Engine,
    settings: Settings,
    out_root: Path,
    *,
    since: datetime | None = None,
    include_qa: bool | None = None,
    include_regulations: bool | None = None,
) -> DatasetVersion:
    """Build, clean, split and version the training data; see the module docstring.

    Parameters
    ----------
    engine
        The project database (feedback and inference events).
    settings
        ``dataset_sources``, ``regulations_dir``, ``qa_train_file``, ``dataset_val_fraction``,
        ``dataset_max_answer_words``.
    out_root
        Folder of data set versions; this one goes to ``out_root/<content_hash>/``.
    since
        Only feedback after this time; ``None`` for all feedback.
    include_qa, include_regulations
        Whether to add the curated QA pairs and the handbook-derived pairs; ``None``: as
        ``settings.dataset_sources`` says. Feedback is read when that setting names it.

    Returns
    -------
    DatasetVersion

    Raises
    ------
    ValueError
        When nothing is left to train on.
    """
    qa_file = settings.qa_train_file
    assert qa_file is not None and settings.regulations_dir is not None  # resolved by Settings
    wanted = set(settings.dataset_sources.split(","))
    include_qa = "qa" in wanted if include_qa is None else include_qa
    include_regulations = "regulations" in wanted if include_regulations is None else include_regulations
    sources: list[tuple[str, Iterable[dict[str, str]], bool]] = []
    capped = {"caller_cap": 0, "subject_cap": 0}
    rejections: list[dict[str, str]] = []
    rejected_counts: dict[str, int] = {}
    if "feedback" in wanted:
        fb_all = feedback_pairs(engine, since, approved_only=settings.feedback_review)
        fb, capped = cap_feedback(fb_all, settings.feedback_max_per_caller, settings.feedback_max_per_subject)
        kept_ids = {p["id"] for p in fb}
        rejections = [
            {"id": p["id"], "reason": "cap", "detail": p.get("caller", "")} for p in fb_all if p["id"] not in kept_ids
        ]
        fb, filtered = _filter_feedback(fb, settings)
        rejections += filtered
        rejected_counts = {r: sum(x["reason"] == r for x in filtered) for r in FILTER_REASONS}
        sources.append(("feedback", fb, True))
    if include_qa:
        qa = [{"id": i.id, "question": i.question, "answer": i.answer, "section": i.section} for i in load_qa(qa_file)]
        sources.append(("qa", qa, False))
    if include_regulations:
        sources.append(("regulations", regulation_pairs(settings.regulations_dir), False))
    records, dropped, redactions = clean_pairs(sources, max_answer_words=settings.dataset_max_answer_words)
    dropped = dropped | capped
    if not records:
        raise ValueError(
            f"no training data from ATALAIA_DATASET_SOURCES={settings.dataset_sources}: no feedback with corrected "
            "answers and no QA or regulation pairs"
        )

    train: list[dict[str, Any]] = []
    val: list[dict[str, Any]] = []
    for record in records:
        (
            val if split_of(normalise_question(record["question"]), settings.dataset_val_fraction) == "val" else train
        ).append(record)
    if not train:  # a tiny data set may hash entirely into val: training needs something
        train, val = val, []
    digest = content_hash(train, val)
    counts = {s: sum(r["source"] == s for r in records) for s in SOURCES}
    manifest = {
        "format": DATASET_FORMAT,
        "content_hash": digest,
        "n_train": len(train),
        "n_val": len(val),
        "n_feedback": counts["feedback"],
        "n_qa": counts["qa"],
        "n_regulations": counts["regulations"],
        "dropped": dropped,
        "redactions": redactions,
        "since": since.isoformat() if since is not None else None,
        "val_fraction": settings.dataset_val_fraction,
        "feedback_review": settings.feedback_review,
        "feedback_rejected": rejected_counts,
        "feedback_rejections": rejections,
        "feedback_used": sorted(r["id"] for r in records if r["source"] == "feedback"),
    }
    out_root = Path(out_root)
    final = out_root / digest
    if not (final / MANIFEST).is_file():
        out_root.mkdir(parents=True, exist_ok=True)
        tmp = out_root / f".{digest}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            _write_jsonl(tmp / "train.jsonl", train)
            _write_jsonl(tmp / "val.jsonl", val)
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
            shutil.rmtree(final, ignore_errors=True)  # an incomplete folder (no manifest) from a crash
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    logger.info(
        "dataset %s: %d train, %d val (feedback %d, qa %d, regulations %d), dropped %s",
        digest[:12],
        len(train),
        len(val),
        counts["feedback"],
        counts["qa"],
        counts["regulations"],
        dropped,
    )
    return DatasetVersion(
        path=final,
        content_hash=digest,
        n_train=len(train),
        n_val=len(val),
        n_feedback=counts["feedback"],
        n_regulations=counts["regulations"],
        dropped=dropped,
        n_qa=counts["qa"],
        redactions=redactions,
        feedback_rejected=rejected_counts,
    )
