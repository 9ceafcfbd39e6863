"""The producer SDK against the real broker: delivery, and spool replay after an outage."""

from __future__ import annotations

import time
import uuid

import pytest
from kafka import KafkaConsumer

from atalaia.events import ChatMessage, FeedbackEvent, InferenceEvent, parse_event
from atalaia.settings import Settings
from atalaia.topics import ensure_topics
from producers.sdk import EventProducer
from producers.spool import Spool, SpooledMessage

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


def _inference(metadata: dict[str, object] | None = None, response: str = "ok") -> InferenceEvent:
    return InferenceEvent(
        service="svc",
        model_version="m@1",
        messages=[ChatMessage(role="user", content="hi")],
        response=response,
        latency_ms=1.0,
        prompt_tokens=1,
        completion_tokens=1,
        cost=0.0,
        metadata=metadata or {},
    )


def _read_inference(settings: Settings, n: int, timeout: float = 30) -> list[InferenceEvent]:
    consumer = KafkaConsumer(
        settings.topic("inference"),
        bootstrap_servers=settings.bootstrap_servers,
        auto_offset_reset="earliest",
        group_id=None,
        consumer_timeout_ms=1000,
        fetch_max_bytes=4_000_000,
        max_partition_fetch_bytes=4_000_000,
    )
    out: list[InferenceEvent] = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < n and time.monotonic() < deadline:
            out.extend(parse_event(rec.value) for rec in consumer)
    finally:
        consumer.close()
    return out


def test_an_oversized_event_never_blocks_the_ones_after_it(isolated_settings: Settings) -> None:
    """The issue's finding: ~1.5 MB of metadata (over Kafka's 1 MB limit) stopped every later delivery."""
    ensure_topics(isolated_settings)
    producer = EventProducer(isolated_settings, client_id="oversized")
    try:
        big = _inference(metadata={"blob": "x" * 1_500_000, "tenant": "acme"})
        producer.emit(big)
        normal = [_inference(metadata={"i": i}) for i in range(3)]
        for ev in normal:
            producer.emit(ev)
        # Delivered while the producer runs (not only at close): nothing waits behind the big one.
        got = _read_inference(isolated_settings, 4, timeout=30)
    finally:
        producer.close()
    by_id = {e.event_id: e for e in got}
    assert {ev.event_id for ev in normal} <= set(by_id), "normal events did not reach Kafka"
    # The big one arrives too, its metadata replaced by a marker saying what was dropped.
    trimmed = by_id[big.event_id]
    assert trimmed.metadata["atalaia_trimmed"]["metadata_bytes"] > 1_500_000
    assert producer.stats.trimmed == 1 and producer.spool_depth == 0 and producer.stats.lost == 0


def test_a_poison_record_in_the_spool_is_moved_aside(isolated_settings: Settings) -> None:
    """A record the broker can never take (left by an older version) must not hold up the spool."""
    ensure_topics(isolated_settings)
    assert isolated_settings.spool_dir is not None
    spool = Spool(isolated_settings.spool_dir / "poison.jsonl")
    topic = isolated_settings.topic("inference")
    good = [_inference(metadata={"i": i}) for i in range(2)]
    spool.append(SpooledMessage(topic, good[0].key, good[0].to_json()))
    spool.append(SpooledMessage(topic, b"k", b"x" * 1_200_000))  # over the broker's message limit
    spool.append(SpooledMessage(topic, good[1].key, good[1].to_json()))
    producer = EventProducer(isolated_settings, client_id="poison")
    try:
        later = _inference(metadata={"after": True})
        producer.emit(later)
        got = _read_inference(isolated_settings, 3, timeout=30)
    finally:
        producer.close()
    assert {e.event_id for e in got} == {good[0].event_id, good[1].event_id, later.event_id}
    assert producer.spool_depth == 0 and producer.stats.dead_lettered == 1
    (record,) = producer.dead_letter.read()
    assert "MessageSizeTooLarge" in record["reason"] and record["topic"] == topic
