"""Four workers on a topic of eight partitions store every event exactly once, also when one of
them is killed (SIGKILL) mid-stream and its partitions move to the others."""

from __future__ import annotations

import os
import signal
from contextlib import ExitStack

import pytest
from sqlalchemy import create_engine, func, select

from atalaia.settings import Settings
from atalaia.storage import tables as t
from atalaia.topics import ensure_topics
from tests.conftest import free_port
from tests.integration.services import log_text, service, wait_until
from tests.integration.test_metrics_pipeline import count, event, produce

pytestmark = pytest.mark.integration

WORKERS = 4
PARTITIONS = 8
EVENTS = 4_000


def test_four_workers_on_eight_partitions_store_each_event_once(isolated_settings: Settings, fresh_pg: str) -> None:
    settings = isolated_settings.model_copy(
        update={"database_url": fresh_pg, "metric_groups": "operational", "topic_partitions": PARTITIONS}
    )
    ensure_topics(settings)
    engine = create_engine(fresh_pg)
    workers = [settings] + [
        settings.model_copy(update={"home": settings.home / f"w{n}", "worker_web_port": free_port()})
        for n in range(1, WORKERS)
    ]
    events = [event(f"q{i}") for i in range(EVENTS)]
    half = EVENTS // 2
    with ExitStack() as stack:
        procs = [stack.enter_context(service("worker", w)) for w in workers]
        produce(settings, events[:half])
        # Every worker got partitions and stored a batch: the group is spread over all four.
        wait_until(
            lambda: all('"batch stored"' in log_text(w, "worker") for w in workers),
            240,
            "a stored batch in each of the four workers' logs",
        )
        victim = 1
        os.kill(procs[victim].pid, signal.SIGKILL)  # mid-stream: its uncommitted batches come again
        procs[victim].wait()
        stored_at_kill = count(engine, t.inference_events)
        produce(settings, events[half:])
        wait_until(
            lambda: count(engine, t.inference_events) == EVENTS,
            300,
            "every event stored by the three survivors\n" + log_text(workers[0], "worker")[-2000:],
        )
    assert stored_at_kill < EVENTS
    with engine.connect() as conn:
        per_id = dict(
            conn.execute(
                select(t.inference_events.c.event_id, func.count()).group_by(t.inference_events.c.event_id)
            ).all()
        )
        metric_dupes = conn.execute(
            select(t.metrics.c.event_id, t.metrics.c.name, func.count())
            .group_by(t.metrics.c.event_id, t.metrics.c.name)
            .having(func.count() > 1)
        ).all()
    assert {str(k) for k in per_id} == {str(e.event_id) for e in events}  # nothing lost
    assert set(per_id.values()) == {1}  # nothing twice
    assert metric_dupes == [] and count(engine, t.metrics) == EVENTS * 6
