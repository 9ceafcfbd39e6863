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
    corrected answer (the QA set's reference) for the regulation questions.
``recovered``
    The same specialised questions, without injections, after the retrained model is deployed.
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


@dataclass
class PhaseMix:
    """What a phase sends: the pool and the injection shares."""

    pool: list[tuple[str, str]]
    off_topic: list[str] = field(default_factory=list)
    off_topic_share: float = 0.0
    toxic_share: float = 0.0
    long_share: float = 0.0
    feedback: bool = False


def load_qa(path: Path | None = None) -> list[dict[str, str]]:
    """The training QA set (never the holdout)."""
    path = path or DATA / "qa" / "train.jsonl"
    return [{str(k): str(v) for k, v in row.items()} for row in read_qa(path)]


def load_off_topic(path: Path | None = None) -> list[str]:
    """Questions that have nothing to do with the regulations."""
    path = path or DATA / "qa" / "off_topic.jsonl"
    return [str(row["question"]) for row in read_jsonl(path)]


def phase_mixes(qa: list[dict[str, str]], off_topic: list[str]) -> dict[str, PhaseMix]:
    """The three phases' mixes from the QA set.

    Examples
    --------
    >>> mixes = phase_mixes(load_qa(), load_off_topic())
    >>> sorted(mixes)
    ['drift', 'normal', 'recovered']
    >>> mixes["drift"].pool == mixes["recovered"].pool
    True
    """
    normal = [(q["question"], q["answer"]) for q in qa if q["topic"] in NORMAL_TOPICS]
    drift = [(q["question"], q["answer"]) for q in qa if q["topic"] in DRIFT_TOPICS]
    return {
        "normal": PhaseMix(normal),
        "drift": PhaseMix(drift, off_topic, off_topic_share=0.25, toxic_share=0.15, long_share=0.3, feedback=True),
        "recovered": PhaseMix(drift),
    }


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
    text, reference = rng.choice(mix.pool)
    return Question(text, reference, "regulation", tokens, mix.feedback)
