"""Review of corrected answers before they train (``ATALAIA_FEEDBACK_REVIEW``).

A correction (feedback with a non-blank corrected answer) is **pending** until a person decides:
:func:`decide` writes one row per correction into ``feedback_reviews`` (``approved`` or
``rejected``, who, when, why). With review on, :func:`retrain.dataset.feedback_pairs` takes only
approved corrections; a rejected correction never trains, review on or off. A later decision
replaces an earlier one (a reviewer may change their mind before the next run).

``atalaia feedback review list|approve|reject`` (:mod:`composition.cli.feedback`) is the front end.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from atalaia.storage.tables import feedback, feedback_reviews, inference_events

if TYPE_CHECKING:  # pragma: no cover - typing only
    from sqlalchemy import Engine

STATES = ("approved", "rejected")
#: Shortest id prefix accepted on the command line (a UUID's first 8 hex digits).
MIN_PREFIX = 8


@dataclass(frozen=True)
class PendingCorrection:
    """A correction waiting for review: its feedback event id, when, who sent it, the question
    (last user message of the rated conversation), the model's answer and the correction."""

    id: str
    ts: datetime
    caller: str
    subject_id: str
    question: str
    response: str
    corrected_answer: str


def has_answer() -> Any:
    """SQL condition: the feedback carries a non-blank corrected answer."""
    from sqlalchemy import and_, func

    return and_(feedback.c.corrected_answer.is_not(None), func.length(func.trim(feedback.c.corrected_answer)) > 0)


def pending(engine: Engine, limit: int = 50) -> list[PendingCorrection]:
    """Corrections with no decision yet, oldest first (the order they wait in).

    Parameters
    ----------
    engine
        The project database.
    limit
        Most rows returned.

    Returns
    -------
    list[PendingCorrection]
    """
    from sqlalchemy import select

    from retrain.dataset import _question_of

    query = (
        select(
            feedback.c.event_id,
            feedback.c.ts,
            feedback.c.caller,
            feedback.c.subject_id,
            feedback.c.corrected_answer,
            inference_events.c.messages,
            inference_events.c.response,
        )
        .select_from(
            feedback.outerjoin(
                inference_events, feedback.c.inference_event_id == inference_events.c.event_id
            ).outerjoin(feedback_reviews, feedback_reviews.c.feedback_event_id == feedback.c.event_id)
        )
        .where(has_answer(), feedback_reviews.c.feedback_event_id.is_(None))
        .order_by(feedback.c.ts, feedback.c.event_id)
        .limit(limit)
    )
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    return [
        PendingCorrection(
            id=row.event_id,
            ts=row.ts,
            caller=row.caller or "",
            subject_id=row.subject_id or "",
            question=_question_of(row.messages) or "",
            response=row.response or "",
            corrected_answer=str(row.corrected_answer),
        )
        for row in rows
    ]


def resolve_ids(engine: Engine, ids: Sequence[str]) -> list[str]:
    """Full feedback event ids for ``ids`` (full ids, ``fb-<id>`` as in data sets, or a unique
    prefix of at least 8 characters).

    Raises
    ------
    ValueError
        Naming every id that matches no correction, or more than one, or is too short.
    """
    from sqlalchemy import select

    problems: list[str] = []
    out: list[str] = []
    with engine.connect() as conn:
        for raw in ids:
            wanted = raw.strip().removeprefix("fb-")
            if len(wanted) < MIN_PREFIX:
                problems.append(f"{raw!r}: give at least {MIN_PREFIX} characters of the id")
                continue
            found: list[str] = list(
                conn.execute(
                    select(feedback.c.event_id)
                    .where(feedback.c.event_id.startswith(wanted, autoescape=True), has_answer())
                    .limit(2)
                ).scalars()
            )
            if not found:
                problems.append(f"{raw!r}: no correction with this id")
            elif len(found) > 1:
                problems.append(f"{raw!r}: matches several corrections, give more characters")
            else:
                out.append(found[0])
    if problems:
        raise ValueError("; ".join(problems))
    return list(dict.fromkeys(out))


def decide(engine: Engine, ids: Sequence[str], state: str, *, reviewed_by: str, reason: str | None = None) -> list[str]:
    """Approve or reject corrections (all or none: an unknown id changes nothing).

    Parameters
    ----------
    engine
        The project database.
    ids
        Feedback event ids or unique prefixes (:func:`resolve_ids`).
    state
        ``"approved"`` or ``"rejected"``.
    reviewed_by
        Who decided (recorded).
    reason
        Why (optional; recorded).

    Returns
    -------
    list[str]
        The full ids decided.
    """
    from sqlalchemy import delete

    from atalaia.events import utcnow

    if state not in STATES:
        raise ValueError(f"state must be one of {STATES}, not {state!r}")
    full = resolve_ids(engine, ids)
    now = utcnow()
    with engine.begin() as conn:
        conn.execute(delete(feedback_reviews).where(feedback_reviews.c.feedback_event_id.in_(full)))
        conn.execute(
            feedback_reviews.insert(),
            [
                {
                    "feedback_event_id": i,
                    "state": state,
                    "reason": reason,
                    "reviewed_by": reviewed_by,
                    "reviewed_at": now,
                }
                for i in full
            ],
        )
    return full


def counts(engine: Engine) -> dict[str, int]:
    """Corrections by review state: ``pending``, ``approved``, ``rejected``."""
    from sqlalchemy import func, select

    state = func.coalesce(feedback_reviews.c.state, "pending")
    query = (
        select(state, func.count())
        .select_from(feedback.outerjoin(feedback_reviews, feedback_reviews.c.feedback_event_id == feedback.c.event_id))
        .where(has_answer())
        .group_by(state)
    )
    with engine.connect() as conn:
        found = {str(row[0]): int(row[1]) for row in conn.execute(query).all()}
    return {s: found.get(s, 0) for s in ("pending", *STATES)}
