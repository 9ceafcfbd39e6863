"""The thin slice end to end on real Kafka, PostgreSQL and SmolLM2.

HTTP request → inference event on Kafka → faust worker stores event + metrics (idempotently)
→ monitor fires a latency alert → alert row + message on ``alerts``. Malformed messages go to the
dead-letter topic with their reason and bytes, and the worker goes on.
"""

from __future__ import annotations

import json
import time
import uuid

import httpx
import pytest
from kafka import KafkaConsumer, KafkaProducer
from sqlalchemy import create_engine, func, select

from atalaia.deadletter import original_bytes
from atalaia.events import ChatMessage, DeadLetterEvent, InferenceEvent, parse_event
from atalaia.metrics.operational import OPERATIONAL_METRICS
from atalaia.settings import Settings
from atalaia.storage import tables as t
from atalaia.topics import ensure_topics
from tests.integration.services import log_text, service, wait_until

pytestmark = pytest.mark.integration

RULES = """
rules:
  - name: latency_p95_test
    metric: latency_ms
    aggregation: p95
    window: 600
    comparator: ">"
    threshold: 1
    for: 1
    min_samples: 3
    severity: critical
    action: retrain
"""


def _count(engine, table, *where) -> int:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one())


def _consume(settings: Settings, topic: str, n: int, timeout: float) -> list[bytes]:
    consumer = KafkaConsumer(
        settings.topic(topic),
        bootstrap_servers=settings.bootstrap_servers,
        auto_offset_reset="earliest",
        group_id=f"probe-{uuid.uuid4().hex[:6]}",
        consumer_timeout_ms=1000,
    )
    out: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < n and time.monotonic() < deadline:
            for rec in consumer:
                out.append(rec.value)
    finally:
        consumer.close()
    return out


def test_request_to_alert_on_real_kafka_and_postgres(isolated_settings: Settings, fresh_pg: str, models_dir) -> None:  # type: ignore[no-untyped-def]
    rules = isolated_settings.home / "rules.yaml"
    rules.write_text(RULES)
    # The foundation slice: operational metrics (the model-based ones are tested in test_metrics_pipeline).
    settings = isolated_settings.model_copy(
        update={"database_url": fresh_pg, "rules_file": rules, "metric_groups": "operational"}
    )
    created = ensure_topics(settings)
    assert len(created) == 6
    engine = create_engine(fresh_pg)
    base = f"http://127.0.0.1:{settings.inference_port}"

    with service("worker", settings), service("monitor", settings), service("serve", settings):
        wait_until(lambda: _healthy(base), 120, "the inference service")

        # 1. Real completions from SmolLM2, answered while events leave in the background.
        ids = []
        with httpx.Client(base_url=base, timeout=120) as client:
            for q in ("What is the capital of France?", "Name a colour.", "Say hello.", "Count to three."):
                r = client.post(
                    "/v1/chat/completions",
                    json={
                        "model": settings.model_version,
                        "max_tokens": 8,
                        "messages": [{"role": "user", "content": q}],
                        "metadata": {"reference": "Paris"},
                    },
                )
                assert r.status_code == 200, r.text
                body = r.json()
                assert body["choices"][0]["message"]["content"].strip()
                assert body["usage"]["completion_tokens"] >= 1
                ids.append(r.headers["x-atalaia-event-id"])
            fb = client.post(
                "/v1/feedback", json={"completion_id": body["id"], "rating": -1, "corrected_answer": "One, two, three."}
            )
            assert fb.status_code == 202, fb.text

        # 2. The worker stored every event with all its operational metrics.
        wait_until(
            lambda: _count(engine, t.inference_events) == 4,
            90,
            "4 stored events\n" + log_text(settings, "worker")[-3000:],
        )
        operational = t.metrics.c.name != "feedback_negative"
        wait_until(lambda: _count(engine, t.metrics, operational) == 4 * len(OPERATIONAL_METRICS), 30, "metric rows")
        with engine.connect() as conn:
            stored = {r.event_id: r for r in conn.execute(select(t.inference_events))}
            latency = dict(
                conn.execute(
                    select(t.metrics.c.event_id, t.metrics.c.value).where(t.metrics.c.name == "latency_ms")
                ).all()
            )
        assert set(stored) == set(ids)
        for event_id, row in stored.items():
            assert row.reference == "Paris" and row.model_version == settings.model_version
            assert latency[event_id] == pytest.approx(row.latency_ms) and row.latency_ms > 1
            assert row.cost > 0
            # RAG on the real index: the retrieved regulation passages travel with the event.
            assert len(row.context) == settings.rag_top_k and all("#" in p["id"] and p["text"] for p in row.context)
        wait_until(lambda: _count(engine, t.feedback) == 1, 30, "the feedback row")

        # 3. The monitor fired the latency rule: stored and published, carrying its action.
        wait_until(
            lambda: _count(engine, t.alerts, t.alerts.c.state == "firing") == 1,
            60,
            "a firing alert\n" + log_text(settings, "monitor")[-3000:],
        )
        alerts = [parse_event(raw) for raw in _consume(settings, "alerts", 2, 30)]
        assert [a.state for a in alerts][:2] == ["pending", "firing"]
        assert alerts[1].rule == "latency_p95_test" and alerts[1].action == "retrain" and alerts[1].value > 1

        # 4. Redelivery changes nothing; malformed messages are dead-lettered; the worker goes on.
        producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers)
        dup = InferenceEvent(
            service="svc",
            model_version="m@1",
            messages=[ChatMessage(role="user", content="q")],
            response="a",
            latency_ms=5,
            prompt_tokens=1,
            completion_tokens=1,
            cost=0,
        )
        bad = [
            b"not json",
            b"\xff\xfe\x00",
            json.dumps(
                {"type": "inference", "schema_version": 1, "event_id": str(uuid.uuid4()), "ts": "2026-01-01T00:00:00Z"}
            ).encode(),
        ]
        for raw in [dup.to_json(), dup.to_json(), *bad, dup.to_json()]:
            producer.send(settings.topic("inference"), value=raw)
        after = InferenceEvent(
            service="svc",
            model_version="m@1",
            messages=[ChatMessage(role="user", content="q2")],
            response="b",
            latency_ms=5,
            prompt_tokens=1,
            completion_tokens=1,
            cost=0,
        )
        producer.send(settings.topic("inference"), value=after.to_json())
        producer.flush()
        producer.close()

        wait_until(lambda: _count(engine, t.inference_events) == 6, 60, "the events after the bad ones")
        time.sleep(2)  # give any duplicate a chance to (wrongly) appear
        assert _count(engine, t.inference_events) == 6
        assert _count(engine, t.metrics, t.metrics.c.event_id == str(dup.event_id)) == len(OPERATIONAL_METRICS)

        dead = [parse_event(raw, DeadLetterEvent) for raw in _consume(settings, "deadletter", 3, 30)]
        assert sorted(original_bytes(d) for d in dead) == sorted(bad)
        reasons = {original_bytes(d): d.reason for d in dead}
        assert "not valid JSON" in reasons[b"not json"]
        assert "UTF-8" in reasons[b"\xff\xfe\x00"]
        assert "'service'" in reasons[bad[2]]
        assert all(d.source_topic == settings.topic("inference") and d.source_offset is not None for d in dead)


def _healthy(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
