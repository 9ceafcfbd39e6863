"""Kafka and spool faults on real processes (``atalaia serve`` with SmolLM2, ``atalaia worker``):

- the broker goes away for 30 s under steady traffic: the service answers every request, its
  events wait in the disk spool and are replayed, and each one is stored exactly once;
- the spool cannot be written: the service starts and answers anyway, and every event it could
  not deliver is counted (``atalaia_events_lost``) and logged, never dropped silently.

The broker is a private one (:func:`tests.integration.faults.private_kafka`) and so is the
database, so stopping them disturbs no one. Outage length: 30 s, as the issue asks; it must
exceed the SDK's 30 s delivery timeout anyway, or the client library would just retry the
in-flight batches and the spool would never be exercised.

Why this test used to flake (1 of 2 CI runs, "not every event stored within 180 s after the
broker returned"): events handed to the Kafka client just before the broker stopped had no
deadline of our own. kafka-python's idempotent producer resets its producer id when a batch
expires and then stops expiring batches until the broker answers, so such events could stay
"in flight" (not spooled, not counted in spool_depth) long after the broker was back, and replay
waited on ``producer.flush()`` of every outstanding batch, those included. The SDK now spools an
event unacknowledged after ``ATALAIA_PRODUCER_IN_FLIGHT_TIMEOUT_S`` and replay waits on its own
chunk only.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, func, select

from atalaia.metrics.operational import OPERATIONAL_METRICS
from atalaia.settings import Settings
from atalaia.storage import tables as t
from atalaia.topics import ensure_topics
from tests.conftest import MAIN_SETTINGS, REQUIRE, free_port
from tests.integration.faults import PrivateKafka, PrivatePostgres, private_kafka, private_postgres
from tests.integration.services import log_text, service, wait_until

pytestmark = pytest.mark.integration

OUTAGE_S = 30.0


@pytest.fixture(scope="module")
def kafka() -> Iterator[PrivateKafka]:
    with private_kafka() as broker:
        yield broker


@pytest.fixture(scope="module")
def pg() -> Iterator[PrivatePostgres]:
    try:
        with private_postgres() as server:
            yield server
    except FileNotFoundError as exc:
        if REQUIRE:
            pytest.fail(f"a private PostgreSQL is required (ATALAIA_REQUIRE_SERVICES=1): {exc}")
        pytest.skip(str(exc))


def _settings(home: Path, bootstrap: str, **extra: Any) -> Settings:
    tag = uuid.uuid4().hex[:8]
    return Settings(
        home=home,
        kafka_bootstrap=bootstrap,
        topic_namespace=f"faults-{tag}",
        topic_partitions=2,
        worker_id=f"faults-worker-{tag}",
        models_dir=MAIN_SETTINGS.models_dir,
        inference_port=free_port(),
        worker_web_port=free_port(),
        metric_groups="operational",
        # The answer path without retrieval or cache: every request generates, and the service
        # starts without loading the embedder.
        rag_enabled=False,
        cache_enabled=False,
        **extra,
    )


def _ask(client: httpx.Client, i: int) -> httpx.Response:
    return client.post(
        "/v1/chat/completions",
        json={"model": "smollm2-135m-instruct", "max_tokens": 2, "messages": [{"role": "user", "content": f"Hi {i}"}]},
    )


def _health(base: str) -> dict[str, Any] | None:
    try:
        r = httpx.get(f"{base}/healthz", timeout=5)
        return r.json() if r.status_code == 200 else None
    except httpx.HTTPError:
        return None


def _prometheus(base: str, name: str) -> float:
    text = httpx.get(f"{base}/metrics", timeout=5).text
    match = re.search(rf"^{name} ([0-9.e+]+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else -1.0


def test_kafka_outage_under_load_spools_replays_and_stores_exactly_once(
    tmp_path: Path, kafka: PrivateKafka, pg: PrivatePostgres, models_dir: Path
) -> None:
    settings = _settings(tmp_path, kafka.bootstrap, database_url=pg.database())
    ensure_topics(settings)
    engine = create_engine(settings.database_url)
    base = f"http://127.0.0.1:{settings.inference_port}"
    answers: list[tuple[float, int, str]] = []  # (time, status, event id)
    stop = threading.Event()

    def steady_load() -> None:
        with httpx.Client(base_url=base, timeout=60) as client:
            i = 0
            while not stop.is_set():
                i += 1
                try:
                    r = _ask(client, i)
                    answers.append((time.monotonic(), r.status_code, r.headers.get("x-atalaia-event-id", "")))
                except httpx.HTTPError as exc:  # a refused connection is a failure too
                    answers.append((time.monotonic(), 0, repr(exc)))

    def stored() -> int:
        with engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(t.inference_events)).scalar_one())

    with service("worker", settings), service("serve", settings):
        wait_until(lambda: _health(base), 180, "the inference service\n" + log_text(settings, "serve")[-2000:])
        loader = threading.Thread(target=steady_load, daemon=True)
        loader.start()
        try:
            wait_until(lambda: stored() >= 3, 120, "events before the outage\n" + log_text(settings, "worker")[-2000:])
            kafka.stop()
            down_at = time.monotonic()
            try:
                # The service stays healthy and spools while the broker is away.
                wait_until(
                    lambda: (_health(base) or {}).get("kafka", {}).get("spool_depth", 0) >= 1,
                    # Events spool once the SDK's 30 s delivery timeout expires; on a loaded
                    # machine that can take well past the nominal outage, so the broker stays
                    # down until spooling is seen (bounded).
                    OUTAGE_S + 75,
                    "events in the spool during the outage\n" + log_text(settings, "serve")[-2000:],
                )
                time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down_at)))
                spooled = (_health(base) or {}).get("kafka", {}).get("spool_depth", 0)
            finally:
                restart_s = kafka.start()
            up_at = time.monotonic()
            time.sleep(5)  # traffic goes on after the broker is back
        finally:
            stop.set()
            loader.join(90)
        during = [a for a in answers if down_at <= a[0] <= up_at]
        try:
            wait_until(lambda: stored() == len(answers), 180, f"all {len(answers)} events stored")
        except AssertionError as exc:
            # Where did the missing ones stop: still spooled (SDK), on the topic (worker), or nowhere?
            kafka_state = (_health(base) or {}).get("kafka")
            raise AssertionError(
                f"{exc}; stored {stored()} of {len(answers)}; inference kafka health {kafka_state}\n"
                + log_text(settings, "serve")[-3000:]
                + log_text(settings, "worker")[-3000:]
            ) from None
        wait_until(lambda: (_health(base) or {}).get("kafka", {}).get("spool_depth") == 0, 60, "an empty spool")
        lost = _prometheus(base, "atalaia_events_lost")
    assert answers and all(status == 200 for _, status, _ in answers), [a for a in answers if a[1] != 200][:5]
    assert len(during) >= 5, "too little traffic during the outage to mean anything"
    with engine.connect() as conn:
        ids = [r[0] for r in conn.execute(select(t.inference_events.c.event_id))]
        metric_rows = conn.execute(select(func.count()).select_from(t.metrics)).scalar_one()
    assert len(ids) == len(set(ids)) == len(answers) and set(ids) == {a[2] for a in answers}
    assert metric_rows == len(answers) * len(OPERATIONAL_METRICS)
    assert lost == 0
    serve_log = log_text(settings, "serve")
    assert "kafka unreachable; spooling events to disk" in serve_log and "spool replayed" in serve_log
    print(
        f"{len(answers)} answers, {len(during)} while the broker was down ({up_at - down_at:.0f} s, restart "
        f"{restart_s:.0f} s), {spooled} events in the spool at its peak reading; every event stored once"
    )
    engine.dispose()


def test_unwritable_spool_is_counted_and_the_service_answers(tmp_path: Path, models_dir: Path) -> None:
    # A file where the spool directory should be: writes fail even for root (chmod would not).
    blocker = tmp_path / "spool"
    blocker.write_text("not a directory\n")
    closed_port = free_port()  # no broker: every event needs the spool
    settings = _settings(tmp_path, f"127.0.0.1:{closed_port}", spool_dir=blocker)
    base = f"http://127.0.0.1:{settings.inference_port}"
    with service("serve", settings):
        wait_until(lambda: _health(base), 180, "the inference service\n" + log_text(settings, "serve")[-2000:])
        with httpx.Client(base_url=base, timeout=60) as client:
            statuses = [_ask(client, i).status_code for i in range(5)]
        wait_until(
            lambda: _prometheus(base, "atalaia_events_lost") >= 5,
            60,
            "the lost events counted in /metrics\n" + log_text(settings, "serve")[-2000:],
        )
        health = _health(base)
    assert statuses == [200] * 5
    assert health is not None and health["status"] == "ok"
    log = log_text(settings, "serve")
    assert "spool unusable: events will be lost while Kafka is unreachable" in log
    assert "event lost: spool unwritable" in log  # one line per batch the spool refused
