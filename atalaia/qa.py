"""The QA data set (``data/qa/*.jsonl``): one reader for retrieval checks, retraining and the demo."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The objects of a JSON Lines file, blank lines skipped."""
    with Path(path).open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def read_qa(path: Path) -> list[dict[str, Any]]:
    """The QA items of a JSON Lines file (``data/qa/train.jsonl``, ``holdout.jsonl``) as dicts."""
    return read_jsonl(path)


@dataclass(frozen=True)
class QAItem:
    """One question/answer pair of the QA data set (``data/qa/*.jsonl``).

    Attributes
    ----------
    id
        ``train-NNNN`` / ``holdout-NNNN``.
    question, answer
        The employee's question and the reference answer.
    section
        The handbook ``Section id`` the fact comes from.
    topic
        A short tag grouping sections.
    """

    id: str
    question: str
    answer: str
    section: str = ""
    topic: str = ""


def load_qa(path: Path) -> list[QAItem]:
    """Read a QA JSON Lines file (``data/qa/train.jsonl`` or ``holdout.jsonl``).

    Parameters
    ----------
    path
        The file.

    Returns
    -------
    list[QAItem]
    """
    return [
        QAItem(
            id=str(row["id"]),
            question=str(row["question"]),
            answer=str(row["answer"]),
            section=str(row.get("section", "")),
            topic=str(row.get("topic", "")),
        )
        for row in read_jsonl(path)
    ]
