"""Worker faults on real processes: SIGKILL in the middle of a batch's write, and a PostgreSQL
outage under steady load. Neither loses an event or stores one twice.

The database is a private PostgreSQL server (:func:`tests.integration.faults.private_postgres`),
so stopping it disturbs no one; Kafka is the shared test broker with a topic namespace of the
test's own.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from kafka import KafkaProducer
from sqlalchemy import create_engine, func, select
from sqlalchemy.engine import make_url

from atalaia.events import ChatMessage, InferenceEvent
from atalaia.metrics.operational import OPERATIONAL_METRICS
from atalaia.settings import Settings
from atalaia.storage import tables as t
from atalaia.topics import ensure_topics
from tests.conftest import MAIN_SETTINGS, REQUIRE, free_port
from tests.integration.faults import PrivatePostgres, private_postgres
from tests.integration.services import log_text, service, wait_until

pytestmark = pytest.mark.integration

PER_EVENT = len(OPERATIONAL_METRICS)


@pytest.fixture(scope="module")
def pg() -> Iterator[PrivatePostgres]:
    try:
        with private_postgres() as server:
            yield server
    except FileNotFoundError as exc:
        if REQUIRE:
            pytest.fail(f"a private PostgreSQL is required (ATALAIA_REQUIRE_SERVICES=1): {exc}")
        pytest.skip(str(exc))


@pytest.fixture
def settings(tmp_path: Any, kafka_bootstrap: str, pg: PrivatePostgres) -> Settings:
    tag = uuid.uuid4().hex[:8]
    s = Settings(
        home=tmp_path,
        kafka_bootstrap=kafka_bootstrap,
        topic_namespace=f"faults-{tag}",
        topic_partitions=2,
        worker_id=f"faults-worker-{tag}",
        models_dir=MAIN_SETTINGS.models_dir,
        worker_web_port=free_port(),
        database_url=pg.database(),
        metric_groups="operational",
    )
    ensure_topics(s)
    return s


def event(i: int) -> InferenceEvent:
    return InferenceEvent(
        service="svc",
        model_version="m@1",
        messages=[ChatMessage(role="user", content=f"question {i}")],
        response="answer",
        latency_ms=100.0 + i,
        prompt_tokens=10,
        completion_tokens=5,
        cost=0.0,
    )


def produce(settings: Settings, events: list[InferenceEvent]) -> None:
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers, linger_ms=5, acks="all")
    for ev in events:
        producer.send(settings.topic("inference"), key=ev.key, value=ev.to_json())
    producer.flush()
    producer.close()


def count(engine: Any, table: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def assert_exactly_once(engine: Any, events: list[InferenceEvent]) -> None:
    with engine.connect() as conn:
        ids = [r[0] for r in conn.execute(select(t.inference_events.c.event_id))]
        metric_rows = conn.execute(select(t.metrics.c.event_id, t.metrics.c.name)).all()
    assert len(ids) == len(set(ids)) == len(events)
    assert set(ids) == {str(ev.event_id) for ev in events}
    assert len(metric_rows) == len(set(metric_rows)) == len(events) * PER_EVENT


def committed_total(settings: Settings) -> int:
    """Sum of the worker group's committed offsets on the inference topic (read without joining)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap_servers, group_id=settings.worker_id)
    try:
        topic = settings.topic("inference")
        offsets = [consumer.committed(TopicPartition(topic, p)) for p in range(settings.topic_partitions)]
    finally:
        consumer.close(autocommit=False)
    return sum(o or 0 for o in offsets)


def test_sigkill_in_the_middle_of_a_batch_write(settings: Settings) -> None:
    engine = create_engine(settings.database_url)
    first = [event(i) for i in range(200)]
    rest = [event(i) for i in range(200, 1200)]
    url = make_url(settings.database_url)
    dsn = f"host={url.host} port={url.port} dbname={url.database} user={url.username}"
    with service("worker", settings) as proc:
        produce(settings, first)
        wait_until(
            lambda: count(engine, t.inference_events) == 200,
            90,
            "the first events\n" + log_text(settings, "worker")[-2000:],
        )
        # Hold the table: the worker's next batch scores, opens its transaction and waits on the
        # lock inside its INSERT. That is where it dies.
        with psycopg.connect(dsn) as blocker:
            blocker.execute("LOCK TABLE inference_events IN ACCESS EXCLUSIVE MODE")

            def worker_waiting() -> bool:
                with psycopg.connect(dsn, autocommit=True) as probe:
                    row = probe.execute(
                        # The batch write (COPY into a staging table, then INSERT ... SELECT from
                        # it, or a plain INSERT for small batches) waits on the table's lock.
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                        "AND query ILIKE '%%inference_events%%'"
                    ).fetchone()
                return bool(row and row[0])

            produce(settings, rest)
            wait_until(worker_waiting, 60, "the worker blocked inside a batch's INSERT", interval=0.2)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            blocker.rollback()
    assert count(engine, t.inference_events) == 200  # the killed batch's transaction left nothing
    with service("worker", settings):
        wait_until(
            lambda: count(engine, t.inference_events) == 1200,
            120,
            "every event after the restart\n" + log_text(settings, "worker")[-2000:],
        )
        wait_until(lambda: count(engine, t.metrics) >= 1200 * PER_EVENT, 30, "every metric row")
        time.sleep(2)  # a redelivered batch, if any, has been processed (and must change nothing)
    assert_exactly_once(engine, first + rest)
    engine.dispose()


def test_postgres_outage_under_load_backs_off_and_stores_everything_once(
    settings: Settings, pg: PrivatePostgres
) -> None:
    engine = create_engine(settings.database_url, pool_pre_ping=True)
    before = [event(i) for i in range(300)]
    during: list[InferenceEvent] = []
    stop = threading.Event()

    def steady_load() -> None:  # 20 events/s into Kafka for as long as the outage lasts
        producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers, linger_ms=5, acks="all")
        i = 1000
        while not stop.is_set():
            ev = event(i)
            producer.send(settings.topic("inference"), key=ev.key, value=ev.to_json())
            during.append(ev)
            i += 1
            time.sleep(0.05)
        producer.flush()
        producer.close()

    with service("worker", settings):
        produce(settings, before)
        wait_until(lambda: count(engine, t.inference_events) == 300, 90, "the events before the outage")
        time.sleep(2)  # the worker commits the offsets of what it stored (every second)
        stored_before = count(engine, t.inference_events)
        engine.dispose()
        loader = threading.Thread(target=steady_load, daemon=True)
        loader.start()
        pg.stop("fast")
        outage_started = time.monotonic()
        try:
            time.sleep(5)
            early = committed_total(settings)
            time.sleep(max(0.0, 30 - (time.monotonic() - outage_started)))
            late = committed_total(settings)
        finally:
            pg.start()
            outage_s = time.monotonic() - outage_started
            time.sleep(3)
            stop.set()
            loader.join(30)
        # Nothing was stored during the outage, so no offset beyond what was stored may be committed.
        assert early == late <= stored_before, (early, late, stored_before)
        total = before + during
        wait_until(
            lambda: count(engine, t.inference_events) == len(total),
            120,
            "every event after the outage\n" + log_text(settings, "worker")[-2000:],
        )
        wait_until(lambda: count(engine, t.metrics) >= len(total) * PER_EVENT, 30, "every metric row")
        recovered_s = time.monotonic() - outage_started - outage_s
    log = log_text(settings, "worker")
    assert "storage write failed; retrying" in log
    assert_exactly_once(engine, total)
    print(f"outage {outage_s:.0f} s, {len(during)} events produced meanwhile, all stored {recovered_s:.0f} s after")
    engine.dispose()
