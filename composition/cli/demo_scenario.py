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
    corrected answer (the QA set's reference) for the training-set regulation questions
    (group ``trained``). A share of the regulation questions are *held out*: questions of the same
    topics from ``data/qa/holdout.jsonl``, which no training data contains, never corrected
    (group ``heldout``).
``recovered``
    After the retrained model is deployed: mostly held-out questions of the drifted topics (the
    measure of recovery: the model never saw them), plus some of the questions users corrected
    (group ``corrected``, reported apart: their reference is what the model was trained on, so a
    gain there is memorisation). No toxic or off-topic injection, and the same share of long
    answers as the drift phase (ROUGE-L falls with answer length whatever the model).
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
    #: Held-out questions (never trained on, never corrected) and their share of regulation questions.
    heldout: list[tuple[str, str]] = field(default_factory=list)
    heldout_share: float = 0.0
    #: The group of ``pool``'s questions ("trained", or "corrected" in the recovered phase).
    pool_group: str = "trained"


def load_qa(path: Path | None = None) -> list[dict[str, str]]:
    """The training QA set (never the holdout)."""
    path = path or DATA / "qa" / "train.jsonl"
    return [{str(k): str(v) for k, v in row.items()} for row in read_qa(path)]


def load_off_topic(path: Path | None = None) -> list[str]:
    """Questions that have nothing to do with the regulations."""
    path = path or DATA / "qa" / "off_topic.jsonl"
    return [str(row["question"]) for row in read_jsonl(path)]


#: Share of long answers in the drift and the recovered phase (the same, so lengths compare).
LONG_SHARE = 0.3
#: Share of held-out questions among the regulation questions of the drift phase.
DRIFT_HELDOUT_SHARE = 0.35
#: Share of held-out questions among the recovered phase's (the rest: corrected ones).
RECOVERED_HELDOUT_SHARE = 0.75


def load_heldout(path: Path | None = None) -> list[tuple[str, str]]:
    """Held-out (question, reference) pairs of the drifted topics: ``data/qa/holdout.jsonl``, which
    the training data never contains."""
    rows = load_qa(path or DATA / "qa" / "holdout.jsonl")
    return [(q["question"], q["answer"]) for q in rows if q["topic"] in DRIFT_TOPICS]


def phase_mixes(
    qa: list[dict[str, str]], off_topic: list[str], heldout: list[tuple[str, str]] | None = None
) -> dict[str, PhaseMix]:
    """The three phases' mixes from the QA set (``recovered`` before any correction; the demo
    builds the real one with :func:`recovered_mix` once it knows what users corrected).

    Examples
    --------
    >>> mixes = phase_mixes(load_qa(), load_off_topic(), load_heldout())
    >>> sorted(mixes)
    ['drift', 'normal', 'recovered']
    >>> mixes["drift"].long_share == mixes["recovered"].long_share
    True
    >>> trained = {q for q, _ in mixes["drift"].pool}
    >>> any(q in trained for q, _ in mixes["recovered"].heldout)
    False
    """
    heldout = load_heldout() if heldout is None else heldout
    normal = [(q["question"], q["answer"]) for q in qa if q["topic"] in NORMAL_TOPICS]
    drift = [(q["question"], q["answer"]) for q in qa if q["topic"] in DRIFT_TOPICS]
    return {
        "normal": PhaseMix(normal),
        "drift": PhaseMix(
            drift,
            off_topic,
            off_topic_share=0.25,
            toxic_share=0.15,
            long_share=LONG_SHARE,
            feedback=True,
            heldout=heldout,
            heldout_share=DRIFT_HELDOUT_SHARE,
        ),
        "recovered": recovered_mix([], heldout),
    }


def recovered_mix(corrected: list[tuple[str, str]], heldout: list[tuple[str, str]]) -> PhaseMix:
    """The recovered phase: held-out questions, plus the corrected ones (group ``corrected``).

    >>> mix = recovered_mix([("c?", "c.")], [("h?", "h.")])
    >>> mix.pool_group, mix.heldout_share, mix.feedback, mix.toxic_share, mix.long_share == LONG_SHARE
    ('corrected', 0.75, False, 0.0, True)
    >>> recovered_mix([], [("h?", "h.")]).heldout_share
    1.0
    """
    pool = list(dict.fromkeys(corrected))
    share = RECOVERED_HELDOUT_SHARE if pool else 1.0
    return PhaseMix(pool, long_share=LONG_SHARE, heldout=list(heldout), heldout_share=share, pool_group="corrected")


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
        text, reference = rng.choice(mix.heldout)
        return Question(text, reference, "regulation", tokens, False, "heldout")  # never corrected
    text, reference = rng.choice(mix.pool)
    return Question(text, reference, "regulation", tokens, mix.feedback, mix.pool_group)
