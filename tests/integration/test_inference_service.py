"""The inference service on the real stack: a hot swap under load fails no request, and a Kafka
outage in the middle of the traffic loses no event."""

from __future__ import annotations

import threading

import httpx
import pytest
from kafka import KafkaProducer
from sqlalchemy import create_engine, func, select

from atalaia.events import ModelEvent
from atalaia.settings import Settings
from atalaia.storage import tables as t
from atalaia.topics import ensure_topics
from composition.kafka import broker
from tests.conftest import MAIN_SETTINGS
from tests.integration.services import log_text, service, wait_until

pytestmark = pytest.mark.integration


def _ask(base: str, question: str, timeout: float = 120) -> httpx.Response:
    return httpx.post(
        f"{base}/v1/chat/completions",
        timeout=timeout,
        json={"model": "smollm2-135m-instruct", "max_tokens": 4, "messages": [{"role": "user", "content": question}]},
    )


def _healthy(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_hot_swap_from_the_models_topic_under_load(isolated_settings: Settings, models_dir) -> None:  # type: ignore[no-untyped-def]
    settings = isolated_settings.model_copy(update={"cache_enabled": False})
    ensure_topics(settings)
    # Inference obeys deploy events only for registered versions (inference/authority.py).
    from atalaia.events import utcnow
    from atalaia.storage.db import upgrade

    upgrade(settings.database_url)
    with create_engine(settings.database_url).begin() as conn:
        conn.execute(
            t.model_versions.insert().values(
                version="smollm2-135m-instruct@v2",
                status="candidate",
                artefact_path=str(MAIN_SETTINGS.generator_path),
                metrics={},
                created_at=utcnow(),
            )
        )
    base = f"http://127.0.0.1:{settings.inference_port}"
    statuses: list[tuple[int, str]] = []
    stop = threading.Event()

    def load() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            r = _ask(base, f"How many vacation days do I get? ({i})")
            statuses.append((r.status_code, r.json().get("model", "") if r.status_code == 200 else r.text))

    with service("serve", settings):
        wait_until(lambda: _healthy(base), 120, "the inference service\n" + log_text(settings, "serve")[-2000:])
        thread = threading.Thread(target=load)
        thread.start()
        try:
            producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers)
            deploy = ModelEvent(
                type="deploy",
                model_version="smollm2-135m-instruct@v2",
                artefact_path=str(MAIN_SETTINGS.generator_path),
                reason="test",
            )

            def swapped() -> bool:
                # Deploys are idempotent: publish until the follower (reading from the end) sees one.
                producer.send(settings.topic("models"), value=deploy.to_json()).get(timeout=10)
                models = httpx.get(f"{base}/v1/models", timeout=5).json()["data"]
                return models[0]["id"] == "smollm2-135m-instruct@v2"

            wait_until(swapped, 90, "the swap\n" + log_text(settings, "serve")[-2000:], interval=3)
            producer.close()
            wait_until(lambda: any(m == "smollm2-135m-instruct@v2" for _, m in statuses[-3:]), 60, "answers from v2")
        finally:
            stop.set()
            thread.join(120)
    assert statuses and all(code == 200 for code, _ in statuses), statuses
    versions = [m for _, m in statuses]
    assert versions[0] == settings.model_version and versions[-1] == "smollm2-135m-instruct@v2"


def test_kafka_outage_mid_traffic_loses_no_event(isolated_settings: Settings, fresh_pg: str, models_dir) -> None:  # type: ignore[no-untyped-def]
    settings = isolated_settings.model_copy(
        update={"database_url": fresh_pg, "metric_groups": "operational", "cache_enabled": False}
    )
    ensure_topics(settings)
    engine = create_engine(fresh_pg)
    base = f"http://127.0.0.1:{settings.inference_port}"

    def stored() -> int:
        with engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(t.inference_events)).scalar_one())

    ids: list[str] = []
    with service("worker", settings), service("serve", settings):
        wait_until(lambda: _healthy(base), 120, "the inference service")
        for i in range(3):
            ids.append(_ask(base, f"Before the outage {i}").headers["x-atalaia-event-id"])
        wait_until(lambda: stored() == 3, 90, "events before the outage\n" + log_text(settings, "worker")[-2000:])
        assert broker.stop(MAIN_SETTINGS), "the test broker was not started by `atalaia kafka start`"
        try:
            for i in range(4):  # the service keeps answering; its events go to the disk spool
                r = _ask(base, f"During the outage {i}")
                assert r.status_code == 200, r.text
                ids.append(r.headers["x-atalaia-event-id"])
            health = httpx.get(f"{base}/healthz", timeout=5).json()
            assert health["status"] == "ok"
            wait_until(
                lambda: httpx.get(f"{base}/healthz", timeout=5).json()["kafka"]["spool_depth"] >= 1,
                60,
                "events spooled during the outage",
            )
        finally:
            broker.start(MAIN_SETTINGS, timeout=120)
        for i in range(2):
            ids.append(_ask(base, f"After the outage {i}").headers["x-atalaia-event-id"])
        wait_until(
            lambda: stored() == len(ids),
            180,
            "every event after the outage\n"
            + log_text(settings, "serve")[-1500:]
            + log_text(settings, "worker")[-1500:],
        )
        wait_until(
            lambda: httpx.get(f"{base}/healthz", timeout=5).json()["kafka"]["spool_depth"] == 0, 60, "an empty spool"
        )
    with engine.connect() as conn:
        got = {r.event_id for r in conn.execute(select(t.inference_events.c.event_id))}
    assert got == set(ids)  # every event, once (event_id is the primary key)
