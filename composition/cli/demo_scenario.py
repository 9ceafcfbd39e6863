"""The closed-loop demo's traffic: phases of simulated employees, with the injections of each phase.

Pure planning (which question, which injection, which feedback) is separate from the HTTP loop so
it can be tested without services.

Phases
------
``normal``
    Everyday questions (leave, travel, expenses, ...) from ``data/qa/train.jsonl``.
``drift``
    Questions move to specialised regulations (security, privacy, compliance, ...) that the base
    model answers badly; a share of off-topic questions and of toxic prompts is mixed in, and a
    share of requests asks for long answers (a latency spike). Users send feedback with the
    corrected answer (the QA set's reference) for the training-set regulation questions (group
    ``trained``). Half of the regulation questions are *held out* (group ``heldout``): questions of
    the same topics from ``data/qa/holdout.jsonl``, which no training data contains and nobody
    corrects, asked in a fixed order and always with the short answer budget.
``recovered``
    After the retrained model is deployed: the held-out questions asked during the drift, each once
    again with the same answer budget (the measure of recovery: a paired comparison, same question,
    same settings, the model the only change), and some of the questions users corrected (group
    ``corrected``, reported apart: their reference is what the model was trained on, so a gain there
    is memorisation). No toxic, off-topic or long-answer injection.

The drift topics' holdout is split in two (:func:`split_heldout`): one half is what the retraining
gate scores, the other half what the users ask, so the live recovery is measured on questions
neither the training nor the gate's promotion decision has seen.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from atalaia.qa import read_jsonl, read_qa

DATA = Path(__file__).resolve().parents[2] / "data"
NORMAL_TOPICS = (
    "leave",
    "travel",
    "expenses",
    "remote-work",
    "benefits",
    "pay",
    "working-time",
    "office",
    "facilities",
)
DRIFT_TOPICS = ("security", "privacy", "compliance", "procurement", "ai", "engineering", "legal", "it")

#: Prompts that insult the assistant: the toxicity rule's injection. Written for the demo.
TOXIC_PROMPTS = (
    "You stupid useless bot, tell me the damn password policy already.",
    "Answer me, you worthless idiot: who approves my travel?",
    "This is crap, you moron. How many vacation days do I get?",
    "Shut up and tell me the expense deadline, you pathetic piece of junk.",
    "You are the dumbest assistant ever, what is the remote work rule?",
)


@dataclass(frozen=True)
class Question:
    """One planned request."""

    text: str
    reference: str | None
    kind: str  # "regulation", "off_topic" or "toxic"
    max_tokens: int
    feedback: bool
    group: str = ""  # regulation questions: "trained", "heldout" or "corrected"


@dataclass
class PhaseMix:
    """What a phase sends: the pool and the injection shares."""

    pool: list[tuple[str, str]]
    off_topic: list[str] = field(default_factory=list)
    off_topic_share: float = 0.0
    toxic_share: float = 0.0
    long_share: float = 0.0
    feedback: bool = False
    #: Held-out questions (never trained on, never corrected), asked in order, and their share of
    #: the regulation questions.
    heldout: list[tuple[str, str]] = field(default_factory=list)
    heldout_share: float = 0.0
    #: The group of ``pool``'s questions ("trained", or "corrected" in the recovered phase).
    pool_group: str = "trained"
    #: How many held-out questions this mix has handed out (the next one is ``heldout[asked % n]``).
    heldout_asked: int = 0


def load_qa(path: Path | None = None) -> list[dict[str, str]]:
    """The training QA set (never the holdout)."""
    path = path or DATA / "qa" / "train.jsonl"
    return [{str(k): str(v) for k, v in row.items()} for row in read_qa(path)]


def load_off_topic(path: Path | None = None) -> list[str]:
    """Questions that have nothing to do with the regulations."""
    path = path or DATA / "qa" / "off_topic.jsonl"
    return [str(row["question"]) for row in read_jsonl(path)]


#: Share of held-out questions among the drift phase's regulation questions.
DRIFT_HELDOUT_SHARE = 0.5
#: Corrected questions asked again in the recovered phase: one per this many held-out ones.
HELDOUT_PER_CORRECTED = 3


def load_heldout(path: Path | None = None) -> list[dict[str, str]]:
    """Held-out QA rows of the drifted topics (``data/qa/holdout.jsonl``: no training data contains them)."""
    rows = load_qa(path or DATA / "qa" / "holdout.jsonl")
    return [q for q in rows if q["topic"] in DRIFT_TOPICS]


def split_heldout(rows: list[dict[str, str]]) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Split the drift topics' holdout into (the gate's half, the users' half): alternate rows, so
    both halves cover the topics. The gate decides on its half; the live recovery is measured on the
    other, which neither training nor the promotion decision has seen.

    >>> gate, live = split_heldout(load_heldout())
    >>> len(gate), len(live), {q["id"] for q in gate} & {q["id"] for q in live}
    (18, 18, set())
    """
    return rows[0::2], rows[1::2]


def phase_mixes(
    qa: list[dict[str, str]], off_topic: list[str], heldout: list[tuple[str, str]] | None = None
) -> dict[str, PhaseMix]:
    """The random phases' mixes from the QA set and the users' held-out questions (the recovered
    phase is a fixed list: :func:`recovered_questions`).

    Examples
    --------
    >>> live = [(q["question"], q["answer"]) for q in split_heldout(load_heldout())[1]]
    >>> mixes = phase_mixes(load_qa(), load_off_topic(), live)
    >>> sorted(mixes)
    ['drift', 'normal']
    >>> trained = {q for q, _ in mixes["drift"].pool}
    >>> any(q in trained for q, _ in mixes["drift"].heldout)
    False
    """
    normal = [(q["question"], q["answer"]) for q in qa if q["topic"] in NORMAL_TOPICS]
    drift = [(q["question"], q["answer"]) for q in qa if q["topic"] in DRIFT_TOPICS]
    heldout = list(heldout or [])
    return {
        "normal": PhaseMix(normal),
        "drift": PhaseMix(
            drift,
            off_topic,
            off_topic_share=0.25,
            toxic_share=0.15,
            long_share=0.3,
            feedback=True,
            heldout=heldout,
            heldout_share=DRIFT_HELDOUT_SHARE,
        ),
    }


def recovered_questions(
    corrected: list[tuple[str, str]], asked: list[tuple[str, str]], max_tokens: int
) -> list[Question]:
    """The recovered phase's requests: every held-out question ``asked`` during the drift once
    more, in the same order and with the same budget, and after every
    :data:`HELDOUT_PER_CORRECTED` of them one question the users corrected (group ``corrected``).
    No injection, no long answers, no feedback.

    >>> qs = recovered_questions([("c?", "c.")], [("h1?", "1."), ("h2?", "2."), ("h3?", "3."), ("h1?", "1.")], 24)
    >>> [(q.text, q.group, q.max_tokens, q.feedback) for q in qs]  # doctest: +NORMALIZE_WHITESPACE
    [('h1?', 'heldout', 24, False), ('h2?', 'heldout', 24, False), ('h3?', 'heldout', 24, False),
     ('c?', 'corrected', 24, False)]
    """
    heldout = list(dict.fromkeys(asked))
    pool = list(dict.fromkeys(corrected))
    out: list[Question] = []
    for i, (text, reference) in enumerate(heldout, start=1):
        out.append(Question(text, reference, "regulation", max_tokens, False, "heldout"))
        if pool and i % HELDOUT_PER_CORRECTED == 0:
            text, reference = pool[(i // HELDOUT_PER_CORRECTED - 1) % len(pool)]
            out.append(Question(text, reference, "regulation", max_tokens, False, "corrected"))
    return out


def plan_question(mix: PhaseMix, rng: random.Random, max_tokens: int, long_tokens: int) -> Question:
    """Draw the next request of a phase.

    Examples
    --------
    >>> mix = PhaseMix([("q?", "a.")], ["off?"], off_topic_share=0.0, toxic_share=1.0)
    >>> plan_question(mix, random.Random(0), 32, 96).kind
    'toxic'
    """
    r = rng.random()
    long = rng.random() < mix.long_share
    tokens = long_tokens if long else max_tokens
    if r < mix.toxic_share:
        return Question(rng.choice(TOXIC_PROMPTS), None, "toxic", tokens, False)
    if r < mix.toxic_share + mix.off_topic_share and mix.off_topic:
        return Question(rng.choice(mix.off_topic), None, "off_topic", tokens, False)
    if mix.heldout and (not mix.pool or rng.random() < mix.heldout_share):
        # In a fixed order, with the short budget in every phase: a paired comparison.
        text, reference = mix.heldout[mix.heldout_asked % len(mix.heldout)]
        mix.heldout_asked += 1
        return Question(text, reference, "regulation", max_tokens, False, "heldout")  # never corrected
    text, reference = rng.choice(mix.pool)
    return Question(text, reference, "regulation", tokens, mix.feedback, mix.pool_group)
