"""Issue 3 on the real stack: every metric arrives, kill -9 loses and duplicates nothing, two
workers share the partitions, a drifted stream is flagged and a stationary one is not."""

from __future__ import annotations

import itertools
import os
import signal
import time

import pytest
from kafka import KafkaProducer
from sqlalchemy import create_engine, func, select

from atalaia.events import ChatMessage, InferenceEvent, RetrievedPassage
from atalaia.settings import Settings
from atalaia.storage import tables as t
from atalaia.topics import ensure_topics
from tests.conftest import free_port
from tests.integration.services import log_text, service, wait_until

pytestmark = pytest.mark.integration

TOPICS = [
    "vacation days",
    "expense reports",
    "remote work",
    "travel approval",
    "security incidents",
    "meal allowance",
    "data retention",
    "supplier gifts",
    "notice period",
    "sick leave",
]
ASKS = [
    "How do I handle {}?",
    "What is the policy on {}?",
    "Who approves {}?",
    "Where do I find the rules for {}?",
    "What changed recently about {}?",
    "Is there a deadline for {}?",
]
OFF_TOPIC = [
    "What is a good recipe for {}?",
    "Which football team won the {} cup?",
    "Tell me a joke about {}.",
    "How do I repair a {} engine?",
    "What is the weather like in {} today?",
]
THINGS = ["lasagna", "pancakes", "world", "European", "parrots", "submarine", "diesel", "Lisbon", "Tokyo", "Oslo"]


def in_distribution(n: int) -> list[str]:
    pairs = itertools.cycle(itertools.product(ASKS, TOPICS))
    return [a.format(tp) for a, tp in itertools.islice(pairs, n)]


def off_topic(n: int) -> list[str]:
    pairs = itertools.cycle(itertools.product(OFF_TOPIC, THINGS))
    return [a.format(tp) for a, tp in itertools.islice(pairs, n)]


def event(prompt: str, version: str = "m@1", reference: str | None = None, **kw) -> InferenceEvent:  # type: ignore[no-untyped-def]
    return InferenceEvent(
        service="svc",
        model_version=version,
        messages=[ChatMessage(role="user", content=prompt)],
        response=kw.pop("response", "Please check the internal regulations portal for the details."),
        reference=reference,
        latency_ms=120.0,
        prompt_tokens=20,
        completion_tokens=12,
        cost=0.0,
        **kw,
    )


def produce(settings: Settings, events: list[InferenceEvent]) -> None:
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers, linger_ms=5)
    for ev in events:
        producer.send(settings.topic("inference"), key=ev.key, value=ev.to_json())
    producer.flush()
    producer.close()


def count(engine, table, *where) -> int:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one())


def test_every_metric_arrives_for_a_batch(isolated_settings: Settings, fresh_pg: str, models_dir) -> None:  # type: ignore[no-untyped-def]
    settings = isolated_settings.model_copy(update={"database_url": fresh_pg})
    ensure_topics(settings)
    engine = create_engine(fresh_pg)
    # Answers of the served base version: perplexity is scored under the version that produced an
    # answer, and an unknown version gets none.
    served = settings.model_version
    events = [
        event(
            q,
            served,
            reference="Vacation is 30 working days a year.",
            context=[RetrievedPassage(id="leave-2", text="Employees have 30 working days of paid vacation.")],
        )
        for q in in_distribution(8)
    ]
    events.append(event("You stupid idiot, answer me", served, response="I am sorry you feel that way."))
    events.append(event("Say nothing", served, response=""))  # an empty response: errors for some metrics, not a crash
    with service("worker", settings):
        produce(settings, events)
        wait_until(
            lambda: count(engine, t.inference_events) == len(events),
            240,
            "events stored\n" + log_text(settings, "worker")[-3000:],
        )
        # A prompt and a response embedding per event, but none of the empty response: an empty
        # text is no point of the drift reference (consumers/scoring.py, TEXT_SIDES).
        wait_until(lambda: count(engine, t.embeddings) == 2 * len(events) - 1, 30, "embeddings")
    with engine.connect() as conn:
        rows = conn.execute(select(t.metrics)).mappings().all()
    per_event: dict[str, dict[str, object]] = {}
    for r in rows:
        per_event.setdefault(r["event_id"], {})[r["name"]] = (
            r["value"] if r["error"] is None else f"error: {r['error']}"
        )
    full = per_event[str(events[0].event_id)]
    expected = {
        "latency_ms",
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "cost",
        "cache_hit",
        "rouge1",
        "rouge2",
        "rougeL",
        "bleu",
        "similarity_reference",
        "similarity_context",
        "similarity_prompt",
        "toxicity_prompt",
        "toxicity_response",
        "perplexity",
    }
    assert expected <= set(full), sorted(full)
    assert ("meteor" in full) or ("meteor_exact" in full)
    assert all(isinstance(full[n], float) for n in expected), full
    assert 1.0 < full["perplexity"] < 1e4  # type: ignore[operator]
    rude = per_event[str(events[-2].event_id)]
    assert rude["toxicity_prompt"] > 0.5 > full["toxicity_prompt"]  # type: ignore[operator]
    backends = {r["labels"]["backend"] for r in rows if r["name"] == "toxicity_prompt"}
    assert len(backends) == 1 and backends.pop()
    empty = per_event[str(events[-1].event_id)]
    assert str(empty["perplexity"]).startswith("error:") and empty["latency_ms"] == 120.0
    # An empty answer has no toxicity or similarity to measure (the toxicity of '' is a constant
    # of the model): no row for them, while its prompt's are kept.
    assert "toxicity_prompt" in empty and not {"toxicity_response", "similarity_reference"} & set(empty)


def test_kill_9_then_restart_loses_and_duplicates_nothing(isolated_settings: Settings, fresh_pg: str) -> None:
    # The scoring budget off: METEOR (an expensive group `text` brings in) scores every event, so
    # the exact row count below is what exactly-once means (a backlog would otherwise be sampled).
    settings = isolated_settings.model_copy(
        update={"database_url": fresh_pg, "metric_groups": "operational,text", "scoring_budget": 0.0}
    )
    ensure_topics(settings)
    engine = create_engine(fresh_pg)
    events = [event(f"question {i}", reference="the answer") for i in range(3000)]
    with service("worker", settings) as proc:
        produce(settings, events)
        wait_until(lambda: count(engine, t.inference_events) >= 300, 120, "the first batches")
        os.kill(proc.pid, signal.SIGKILL)  # mid-stream: some batches stored, offsets maybe not committed
        proc.wait()
    stored_at_kill = count(engine, t.inference_events)
    assert stored_at_kill < len(events)
    with service("worker", settings):
        wait_until(
            lambda: count(engine, t.inference_events) == len(events),
            180,
            "all events after the restart\n" + log_text(settings, "worker")[-2000:],
        )
        # The worker's timer materializes the closed 1-minute windows of these metrics.
        wait_until(
            lambda: count(engine, t.metric_windows, t.metric_windows.c.name == "latency_ms") > 0,
            90,
            "window aggregates\n" + log_text(settings, "worker")[-2000:],
        )
    with engine.connect() as conn:
        windows = conn.execute(select(t.metric_windows).where(t.metric_windows.c.name == "latency_ms")).all()
    assert all(w.mean == 120.0 and w.p99 == 120.0 and w.count > 0 for w in windows)
    per_event = 6 + 5  # operational + rouge1/2/L, bleu (text) + meteor(_exact) (meteor)
    assert count(engine, t.metrics) == len(events) * per_event
    with engine.connect() as conn:
        dupes = conn.execute(
            select(t.metrics.c.event_id, t.metrics.c.name, func.count())
            .group_by(t.metrics.c.event_id, t.metrics.c.name)
            .having(func.count() > 1)
        ).all()
    assert dupes == []


def test_two_workers_share_the_partitions(isolated_settings: Settings, fresh_pg: str) -> None:
    settings = isolated_settings.model_copy(
        update={"database_url": fresh_pg, "metric_groups": "operational", "topic_partitions": 4}
    )
    ensure_topics(settings)
    engine = create_engine(fresh_pg)
    second = settings.model_copy(update={"home": settings.home / "w2", "worker_web_port": free_port()})

    def both_stored() -> bool:
        return all('"batch stored"' in log_text(s, "worker") for s in (settings, second))

    with service("worker", settings), service("worker", second):
        # Traffic keeps coming until the group has rebalanced over both: on a fast machine the
        # first worker alone drains a single burst before the second one has even joined.
        events: list[InferenceEvent] = []
        deadline = time.monotonic() + 180
        while not both_stored() and time.monotonic() < deadline:
            chunk = [event(f"q{len(events) + i}") for i in range(200)]
            produce(settings, chunk)
            events += chunk
            time.sleep(1.0)
        wait_until(lambda: count(engine, t.inference_events) == len(events), 180, "all events")
    assert both_stored(), "one worker got no partition"
    assert count(engine, t.metrics) == len(events) * 6


def test_drifted_stream_is_flagged_and_stationary_is_not(
    isolated_settings: Settings, fresh_pg: str, models_dir
) -> None:  # type: ignore[no-untyped-def]
    settings = isolated_settings.model_copy(
        update={
            "database_url": fresh_pg,
            "metric_groups": "operational,drift",
            # The detector on every prompt (the budget's time-stratified sample is its own test).
            "scoring_budget": 0.0,
            "drift_reference_size": 120,
            "drift_window_size": 40,
            "drift_stride": 20,
            "drift_target_arl": 1000,
        }
    )
    ensure_topics(settings)
    engine = create_engine(fresh_pg)
    stationary = [event(q, version="stationary@1") for q in in_distribution(300)]
    drifting = [event(q, version="drifting@1") for q in in_distribution(160) + off_topic(80)]
    with service("worker", settings):
        produce(settings, stationary + drifting)
        wait_until(
            lambda: count(engine, t.inference_events) == 540, 300, "events\n" + log_text(settings, "worker")[-2000:]
        )
        wait_until(
            lambda: (
                count(
                    engine,
                    t.metrics,
                    t.metrics.c.name == "embedding_drift_flag",
                    t.metrics.c.model_version == "drifting@1",
                    t.metrics.c.value == 1.0,
                )
                > 0
            ),
            60,
            "a drift flag on the drifting stream",
        )
    with engine.connect() as conn:
        flags = conn.execute(
            select(t.metrics.c.model_version, t.metrics.c.value).where(t.metrics.c.name == "embedding_drift_flag")
        ).all()
    stationary_flags = [v for m, v in flags if m == "stationary@1"]
    assert len(stationary_flags) >= 5 and sum(stationary_flags) == 0


def test_metrics_topic_carries_compact_batches_matching_the_rows(isolated_settings: Settings, fresh_pg: str) -> None:
    """The worker publishes ``metric_batch`` messages (not one per metric); read back with
    ``parse_metrics`` they hold exactly the stored metric rows, with the same deterministic ids."""
    from kafka import KafkaConsumer

    from atalaia.events import MetricEvent, parse_metrics

    settings = isolated_settings.model_copy(update={"database_url": fresh_pg, "metric_groups": "operational"})
    ensure_topics(settings)
    engine = create_engine(fresh_pg)
    events = [event(f"q{i}") for i in range(120)]
    with service("worker", settings):
        produce(settings, events)
        wait_until(lambda: count(engine, t.metrics) == len(events) * 6, 120, "all metric rows")
        consumer = KafkaConsumer(
            settings.topic("metrics"),
            bootstrap_servers=settings.bootstrap_servers,
            auto_offset_reset="earliest",
            consumer_timeout_ms=5000,
        )
        messages = [rec.value for rec in consumer]
        consumer.close()
    read = [m for raw in messages for m in parse_metrics(raw)]
    assert len(messages) < len(events)  # compact: far fewer messages than the 720 metrics
    with engine.connect() as conn:
        rows = {(r.event_id, r.name) for r in conn.execute(select(t.metrics.c.event_id, t.metrics.c.name))}
    assert {(str(m.source_event_id), m.name) for m in read} == rows
    assert all(m.event_id == MetricEvent.id_for(m.source_event_id, m.name) for m in read)
