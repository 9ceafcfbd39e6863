"""``feedback_negative``: the share-of-negative-feedback signal, keyed on the rated event."""

from __future__ import annotations

import uuid
from pathlib import Path

from atalaia.events import ChatMessage, FeedbackEvent, InferenceEvent
from atalaia.storage import repository
from atalaia.storage.db import get_engine, upgrade
from consumers.feedback_signals import feedback_signal_metrics


def _event(version: str) -> InferenceEvent:
    return InferenceEvent(
        service="svc",
        model_version=version,
        messages=[ChatMessage(role="user", content="How many vacation days?")],
        response="Twenty.",
        latency_ms=10.0,
        prompt_tokens=5,
        completion_tokens=2,
        cost=0.0,
    )


def test_negative_feedback_is_one_per_rated_event(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'f.db'}"
    upgrade(url)
    engine = get_engine(url)
    a, b, c = _event("m@1"), _event("m@1"), _event("m@2")
    feedback = [
        FeedbackEvent(inference_event_id=a.event_id, rating=-1),
        FeedbackEvent(inference_event_id=b.event_id, rating=1),
        FeedbackEvent(inference_event_id=c.event_id, rating=1, corrected_answer="Twenty-two working days."),
        FeedbackEvent(inference_event_id=uuid.uuid4(), rating=-1),  # unknown event: skipped
    ]
    with engine.begin() as conn:
        repository.store_inference_batch(conn, [a, b, c], [])
        metrics = feedback_signal_metrics(conn, feedback)
    got = {(m.source_event_id, m.model_version, m.value) for m in metrics}
    assert got == {(a.event_id, "m@1", 1.0), (b.event_id, "m@1", 0.0), (c.event_id, "m@2", 1.0)}
    assert all(m.name == "feedback_negative" and m.labels["feedback_event_id"] for m in metrics)
    # Keyed on the inference event: a second feedback on the same answer has the same id.
    again = feedback_signal_metrics(engine.connect(), [FeedbackEvent(inference_event_id=a.event_id, rating=-1)])
    assert again[0].event_id == metrics[0].event_id
