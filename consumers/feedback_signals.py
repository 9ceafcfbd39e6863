"""Signals from users' feedback that need no reference answer: ``feedback_negative`` per
feedback event (1 when the user rated the answer -1 or sent a corrected answer, else 0).

Keyed on the rated inference event (one row per inference event, so a second feedback on the
same answer does not count twice), with that event's model version and service, so the mean of
``feedback_negative`` over a window is the share of negative feedback per model version, a
retraining trigger that production traffic has (see ``monitors/default_rules.yaml``).

Known gap: feedback processed before its inference event is stored (the two topics are consumed
by separate agents) gets no ``feedback_negative`` row; tests/integration/test_slice.py showed
this race for feedback sent right after the request. It should be re-derived when the inference
event arrives (not done yet).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select

from atalaia.events import FeedbackEvent, MetricEvent
from atalaia.storage import repository
from atalaia.storage import tables as t

NAME = "feedback_negative"


def is_negative(fb: FeedbackEvent) -> bool:
    """A rating of -1 or a corrected answer (a correction says the answer was wrong).

    >>> import uuid
    >>> is_negative(FeedbackEvent(inference_event_id=uuid.uuid4(), rating=1))
    False
    >>> is_negative(FeedbackEvent(inference_event_id=uuid.uuid4(), corrected_answer="20 days"))
    True
    """
    return fb.rating == -1 or bool(fb.corrected_answer and fb.corrected_answer.strip())


def feedback_signal_metrics(conn: Any, feedback: Sequence[FeedbackEvent]) -> list[MetricEvent]:
    """One ``feedback_negative`` metric per feedback event whose inference event is stored."""
    ids = sorted({str(fb.inference_event_id) for fb in feedback})
    if not ids:
        return []
    rows = {
        r["event_id"]: r
        for r in conn.execute(
            select(
                t.inference_events.c.event_id,
                t.inference_events.c.ts,
                t.inference_events.c.service,
                t.inference_events.c.model_version,
            ).where(t.inference_events.c.event_id.in_(ids))
        ).mappings()
    }
    out: list[MetricEvent] = []
    for fb in feedback:
        row = rows.get(str(fb.inference_event_id))
        if row is None:  # feedback on an event not stored (yet): nothing to attribute it to
            continue
        out.append(
            MetricEvent(
                event_id=MetricEvent.id_for(fb.inference_event_id, NAME),
                source_event_id=fb.inference_event_id,
                source_ts=repository.as_utc(row["ts"]),
                service=row["service"],
                model_version=row["model_version"],
                name=NAME,
                value=1.0 if is_negative(fb) else 0.0,
                labels={"feedback_event_id": str(fb.event_id)},
            )
        )
    return out
