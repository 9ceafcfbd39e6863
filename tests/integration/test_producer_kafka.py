"""The producer SDK against the real broker: delivery, and spool replay after an outage."""

from __future__ import annotations

import time
import uuid

import pytest
from kafka import KafkaConsumer

from atalaia.events import FeedbackEvent, parse_event
from atalaia.settings import Settings
from atalaia.topics import ensure_topics
from producers.sdk import EventProducer

pytestmark = pytest.mark.integration


def _read_all(settings: Settings, n: int, timeout: float = 30) -> list[tuple[int, FeedbackEvent]]:
    """(partition, event) pairs, in offset order within each partition."""
    consumer = KafkaConsumer(
        settings.topic("feedback"),
        bootstrap_servers=settings.bootstrap_servers,
        auto_offset_reset="earliest",
        group_id=None,
        consumer_timeout_ms=1000,
    )
    out = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < n and time.monotonic() < deadline:
            out.extend((rec.partition, parse_event(rec.value)) for rec in consumer)
    finally:
        consumer.close()
    return out


def test_events_reach_kafka(isolated_settings: Settings) -> None:
    ensure_topics(isolated_settings)
    producer = EventProducer(isolated_settings, client_id="itest")
    sent = [FeedbackEvent(inference_event_id=uuid.uuid4(), rating=1) for _ in range(50)]
    for ev in sent:
        producer.emit(ev)
    producer.close()
    assert producer.stats.sent == 50 and producer.spool_depth == 0 and producer.stats.lost == 0
    assert {e.event_id for _, e in _read_all(isolated_settings, 50)} == {e.event_id for e in sent}


def test_spooled_events_replay_in_order_when_kafka_answers(isolated_settings: Settings) -> None:
    ensure_topics(isolated_settings)
    # The service starts while Kafka is unreachable: everything is spooled, nothing is lost.
    down = isolated_settings.model_copy(update={"kafka_bootstrap": "127.0.0.1:1"})
    offline = EventProducer(down, client_id="replay")
    sent = [FeedbackEvent(inference_event_id=uuid.uuid4(), rating=0, comment=str(i)) for i in range(30)]
    for ev in sent:
        offline.emit(ev)
    offline.close(timeout=20)
    assert offline.spool_depth == 30 and offline.stats.lost == 0

    # The next process with the same spool finds Kafka and replays, oldest first.
    online = EventProducer(isolated_settings, client_id="replay")
    deadline = time.monotonic() + 30
    while online.spool_depth and time.monotonic() < deadline:
        time.sleep(0.2)
    extra = FeedbackEvent(inference_event_id=uuid.uuid4(), rating=1, comment="after")
    online.emit(extra)
    online.close()
    assert online.spool_depth == 0 and online.stats.replayed == 30
    got = _read_all(isolated_settings, 31)
    assert {e.event_id for _, e in got} == {e.event_id for e in sent} | {extra.event_id}
    # Kafka orders within a partition: there, replayed events keep the order they were emitted in.
    position = {e.event_id: i for i, e in enumerate([*sent, extra])}
    for partition in {p for p, _ in got}:
        order = [position[e.event_id] for p, e in got if p == partition]
        assert order == sorted(order)
