"""No poison message: whatever ``parse_event`` accepts, the worker can score and store in
PostgreSQL. An event that parses but cannot be written would be retried forever (storage errors
are retried with backoff, because an outage must not skip a batch), blocking its partition; so
such events must be refused at parsing, where they are dead-lettered with a reason.

Hypothesis, fixed seed, bounded examples; each example is written in a transaction that is
rolled back.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine

from atalaia.events import EventError, InferenceEvent, parse_event
from atalaia.settings import Settings
from atalaia.storage import repository
from consumers.scoring import BatchScorer
from tests.unit.test_properties_events import valid_inference

pytestmark = pytest.mark.integration

PROFILE = settings(
    max_examples=120,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

adversarial_text = (
    st.text(max_size=40)
    | st.text(alphabet=st.sampled_from(["\x00", "a", "\u2028", "é", "\U0001f600", "'", '"', "\\", "%", "{"]))
    | st.sampled_from(["%s", "{}", "%(x)s", "\x00"])
    | st.text(min_size=150, max_size=400)
)
numbers = st.integers(min_value=-(2**70), max_value=2**70) | st.floats() | st.sampled_from([2**31, 2**31 - 1, 2**63])
FIELDS: dict[str, Any] = {
    "service": adversarial_text,
    "model_version": adversarial_text,
    "response": adversarial_text,
    "reference": adversarial_text,
    "request_id": adversarial_text,
    "messages": st.lists(st.fixed_dictionaries({"role": st.just("user"), "content": adversarial_text}), min_size=1),
    "context": st.lists(st.fixed_dictionaries({"id": adversarial_text, "text": adversarial_text}), max_size=2),
    "metadata": st.dictionaries(adversarial_text, adversarial_text | numbers, max_size=3),
    "latency_ms": numbers,
    "prompt_tokens": numbers,
    "completion_tokens": numbers,
    "cost": numbers,
}


@pytest.fixture(scope="module")
def engine(pg_url: str) -> Any:
    from atalaia.storage.db import upgrade

    upgrade(pg_url)  # the tables, if no earlier test created them
    return create_engine(pg_url)


@PROFILE
@given(data=st.data())
def test_every_accepted_event_is_storable(engine: Any, data: st.DataObject) -> None:
    fields = data.draw(st.sets(st.sampled_from(sorted(FIELDS)), min_size=1, max_size=4))
    # Sorted: a set of strings iterates in hash order, which PYTHONHASHSEED changes per process, so
    # the draws (and the examples a fixed seed explores) would differ from run to run.
    event_json = valid_inference() | {name: data.draw(FIELDS[name], label=name) for name in sorted(fields)}
    raw = json.dumps(event_json).encode()
    try:
        event = parse_event(raw, InferenceEvent)
    except EventError:
        return  # refused: the worker dead-letters it
    scored = BatchScorer(Settings(metric_groups="operational")).score([event])
    with engine.connect() as conn:
        tx = conn.begin()
        try:
            repository.store_inference_batch(conn, [event], scored.metrics)
        finally:
            tx.rollback()
    for metric in scored.metrics:
        metric.to_json()  # published on the metrics topic after the commit


def test_non_finite_metadata_is_stored_as_null(engine: Any) -> None:
    """The example hypothesis found: ``{"": Infinity}`` in metadata parsed, then PostgreSQL's json
    column refused it on every retry. It is now stored, as null."""
    raw = json.dumps(valid_inference() | {"metadata": {"": float("inf"), "nan": float("nan"), "ok": 1}}).encode()
    event = parse_event(raw, InferenceEvent)
    scored = BatchScorer(Settings(metric_groups="operational")).score([event])
    with engine.connect() as conn:
        tx = conn.begin()
        try:
            repository.store_inference_batch(conn, [event], scored.metrics)
            stored = conn.exec_driver_sql(
                "SELECT metadata FROM inference_events WHERE event_id = %s", (str(event.event_id),)
            ).scalar_one()
        finally:
            tx.rollback()
    assert stored == {"": None, "nan": None, "ok": 1}


def test_non_finite_run_metrics_are_stored_as_null(pg_url: str, engine: Any) -> None:
    """A candidate whose loss went NaN, or whose perplexity overflowed, must still be recorded:
    every engine Atalaia builds writes non-finite numbers in JSON columns as null."""
    from sqlalchemy import insert, select

    from atalaia.events import utcnow
    from atalaia.storage import tables as t
    from atalaia.storage.db import get_engine

    with get_engine(pg_url).connect() as conn:
        tx = conn.begin()
        try:
            conn.execute(
                insert(t.model_versions).values(
                    version="nan-candidate@1",
                    status="candidate",
                    metrics={"holdout_perplexity": float("inf"), "train_loss": float("nan"), "rouge_l": 0.2},
                    created_at=utcnow(),
                )
            )
            stored = conn.execute(
                select(t.model_versions.c.metrics).where(t.model_versions.c.version == "nan-candidate@1")
            ).scalar_one()
        finally:
            tx.rollback()
    assert stored == {"holdout_perplexity": None, "train_loss": None, "rouge_l": 0.2}
