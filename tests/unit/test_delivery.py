"""The delivery promise, unit level: an undeliverable event never blocks the others, the spool
survives a torn write and has a cap, replay keeps what it delivered out of the spool."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from kafka.errors import KafkaTimeoutError, MessageSizeTooLargeError

from atalaia.event_fit import TRUNCATED_KEY, TRUNCATION_MARKER
from atalaia.events import MAX_EVENT_BYTES, ChatMessage, FeedbackEvent, InferenceEvent, RetrievedPassage, parse_event
from atalaia.settings import Settings
from producers.sdk import EventProducer
from producers.spool import Spool, SpooledMessage, SpoolFullError


def _inference(metadata: dict[str, Any] | None = None, response: str = "ok") -> InferenceEvent:
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


# -- the spool ---------------------------------------------------------------------------------
def test_a_torn_tail_is_truncated_at_open_so_the_next_append_survives(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    Spool(path).append(SpooledMessage("t", b"k", b"ok"))
    with path.open("a") as fh:
        fh.write('{"topic": "t", "key": nu')  # a crash mid-append
    reopened = Spool(path)
    assert len(reopened) == 1
    reopened.append(SpooledMessage("t", b"k", b"next"))
    assert [m.value for m in Spool(path).read()] == [b"ok", b"next"]


def test_counts_are_messages_not_raw_lines(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    spool = Spool(path)
    spool.append(SpooledMessage("t", None, b"a"))
    with path.open("a") as fh:
        fh.write("not json\n")  # an unreadable line in the middle (an old torn write)
    spool.append(SpooledMessage("t", None, b"b"))
    reopened = Spool(path)
    assert len(reopened) == 2
    reopened.drop_first(1)
    assert [m.value for m in reopened.read()] == [b"b"] and len(reopened) == 1


def test_the_spool_has_a_cap_and_refuses_past_it(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.jsonl", max_bytes=2_000)
    spool.append_many([SpooledMessage("t", None, b"x" * 500)])
    with pytest.raises(SpoolFullError):
        spool.append_many([SpooledMessage("t", None, b"x" * 500)] * 3)
    assert len(spool) == 1  # all or nothing


def test_oldest_age_comes_from_the_first_record(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.jsonl")
    assert spool.oldest_age_s() is None
    spool.append(SpooledMessage("t", None, b"a", created=time.time() - 100))
    spool.append(SpooledMessage("t", None, b"b"))
    age = Spool(spool.path).oldest_age_s()
    assert age is not None and 99 < age < 200


def test_a_full_spool_counts_losses(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, kafka_bootstrap="127.0.0.1:1", spool_max_bytes=5_000)
    producer = EventProducer(settings, client_id="cap", start=False)
    for _ in range(40):
        producer.emit(FeedbackEvent(inference_event_id=uuid.uuid4(), rating=1))
    producer.close(timeout=5)
    assert producer.stats.lost > 0 and producer.stats.spooled + producer.stats.lost == 40


# -- size checks at emit -----------------------------------------------------------------------
def test_oversized_metadata_is_replaced_by_a_marker_and_counted(tmp_path: Path) -> None:
    producer = EventProducer(Settings(home=tmp_path, kafka_bootstrap="127.0.0.1:1"), client_id="big", start=False)
    producer.emit(_inference(metadata={"blob": "x" * 1_500_000}))
    producer.close(timeout=5)
    (spooled,) = producer.spool.read()
    assert len(spooled.value) <= MAX_EVENT_BYTES
    event = parse_event(spooled.value)  # still a valid event for the worker
    assert event.metadata["atalaia_trimmed"]["metadata_bytes"] > 1_500_000
    assert producer.stats.trimmed == 1 and producer.stats.dead_lettered == 0


def test_an_oversized_prompt_is_shortened_not_lost(tmp_path: Path) -> None:
    producer = EventProducer(Settings(home=tmp_path, kafka_bootstrap="127.0.0.1:1"), client_id="big", start=False)
    producer.emit(_inference(metadata={"source": "gateway"}, response="y" * (MAX_EVENT_BYTES + 10)))
    producer.close(timeout=5)
    (spooled,) = producer.spool.read()
    event = parse_event(spooled.value)
    assert len(spooled.value) <= MAX_EVENT_BYTES and event.response.endswith(TRUNCATION_MARKER)
    assert event.metadata["source"] == "gateway" and event.metadata[TRUNCATED_KEY]["original_bytes"] > MAX_EVENT_BYTES
    assert producer.stats.trimmed == 1 and producer.stats.dead_lettered == 0


def test_oversized_metadata_and_texts_are_both_cut(tmp_path: Path) -> None:
    producer = EventProducer(Settings(home=tmp_path, kafka_bootstrap="127.0.0.1:1"), client_id="big", start=False)
    producer.emit(_inference(metadata={"blob": "x" * 1_500_000}, response="y" * 1_500_000))
    producer.close(timeout=5)
    (spooled,) = producer.spool.read()
    event = parse_event(spooled.value)
    assert len(spooled.value) <= MAX_EVENT_BYTES and "atalaia_trimmed" in event.metadata
    assert event.response.endswith(TRUNCATION_MARKER) and producer.stats.dead_lettered == 0


def test_a_conversation_of_many_tiny_messages_loses_its_oldest_turns_not_the_event(tmp_path: Path) -> None:
    producer = EventProducer(Settings(home=tmp_path, kafka_bootstrap="127.0.0.1:1"), client_id="big", start=False)
    many = _inference().model_copy(update={"messages": [ChatMessage(role="user", content="a")] * 60_000})
    assert len(many.to_json()) > MAX_EVENT_BYTES
    producer.emit(many)
    producer.close(timeout=5)
    (spooled,) = producer.spool.read()
    event = parse_event(spooled.value)
    assert isinstance(event, InferenceEvent) and len(spooled.value) <= MAX_EVENT_BYTES
    assert 0 < event.metadata[TRUNCATED_KEY]["dropped_messages"] < 60_000
    assert producer.stats.trimmed == 1 and producer.stats.dead_lettered == 0


def test_an_event_too_big_even_without_metadata_is_dead_lettered_locally(tmp_path: Path) -> None:
    producer = EventProducer(Settings(home=tmp_path, kafka_bootstrap="127.0.0.1:1"), client_id="big", start=False)
    # Nothing to shorten or drop: tens of thousands of empty retrieved passages.
    many = _inference().model_copy(update={"context": [RetrievedPassage(id="p", text="")] * 40_000})
    assert len(many.to_json()) > MAX_EVENT_BYTES
    producer.emit(many)
    producer.close(timeout=5)
    assert producer.spool_depth == 0 and producer.stats.dead_lettered == 1
    (record,) = producer.dead_letter.read()
    assert "exceeds" in record["reason"] and record["topic"].endswith("inference")
    assert json.loads(record["value"])["type"] == "inference"


# -- a fake Kafka client for replay and in-flight behaviour ------------------------------------
class _Future:
    def __init__(self, outcome: Exception | str | None) -> None:
        self.outcome = outcome

    def get(self, timeout: float | None = None) -> Any:
        if self.outcome == "hang":
            raise KafkaTimeoutError("no answer")
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return "metadata"

    def add_callback(self, fn: Any) -> None:
        if self.outcome is None:
            fn("metadata")

    def add_errback(self, fn: Any) -> None:
        if isinstance(self.outcome, Exception):
            fn(self.outcome)


class _FakeKafka:
    """Raises MessageSizeTooLarge for values starting with b"big"; fails values starting with b"down"."""

    def __init__(self, hang: bool = False) -> None:
        self.sent: list[bytes] = []
        self.hang = hang
        self.closed = False

    def send(self, topic: str, key: bytes | None = None, value: bytes = b"") -> _Future:
        if value.startswith(b"big"):
            raise MessageSizeTooLargeError("The message is too large")
        if self.hang:
            return _Future("hang")
        if value.startswith(b"down"):
            return _Future(KafkaTimeoutError("expired"))
        self.sent.append(value)
        return _Future(None)

    def flush(self, timeout: float | None = None) -> None:
        pass

    def close(self, timeout: float | None = None) -> None:
        self.closed = True


def _stopped(tmp_path: Path, fake: _FakeKafka, **extra: Any) -> EventProducer:
    producer = EventProducer(
        Settings(home=tmp_path, kafka_bootstrap="127.0.0.1:1", **extra), client_id="fake", start=False
    )
    producer._producer = fake
    return producer


def test_replay_moves_a_poison_record_aside_and_delivers_the_rest(tmp_path: Path) -> None:
    fake = _FakeKafka()
    producer = _stopped(tmp_path, fake)
    producer.spool.append_many([SpooledMessage("t", None, v) for v in (b"a", b"big", b"b")])
    producer._replay()
    assert fake.sent == [b"a", b"b"] and producer.spool_depth == 0
    assert producer.stats.dead_lettered == 1 and producer.stats.replayed == 2
    (record,) = producer.dead_letter.read()
    assert "MessageSizeTooLarge" in record["reason"]


def test_a_failed_replay_keeps_only_what_was_not_delivered(tmp_path: Path) -> None:
    fake = _FakeKafka()
    producer = _stopped(tmp_path, fake)
    producer.spool.append_many([SpooledMessage("t", None, v) for v in (b"a", b"down1", b"b", b"c")])
    producer._replay()
    assert fake.sent == [b"a", b"b", b"c"]
    assert [m.value for m in producer.spool.read()] == [b"down1"]  # delivered ones are not kept
    assert producer.stats.replayed == 3


def test_a_poison_send_never_blocks_later_events(tmp_path: Path) -> None:
    fake = _FakeKafka()
    producer = _stopped(tmp_path, fake)
    for value in (b"big", b"a", b"b"):
        message = SpooledMessage("t", None, value)
        producer._current = message
        try:
            producer._send(message)
        except Exception as exc:  # noqa: BLE001 - what the sender loop does with a failed send
            producer._send_failed(message, exc)
    assert fake.sent == [b"a", b"b"] and producer.connected and producer.spool_depth == 0
    assert producer.stats.dead_lettered == 1


def test_in_flight_events_past_their_deadline_are_spooled(tmp_path: Path) -> None:
    fake = _FakeKafka(hang=True)
    producer = _stopped(tmp_path, fake, producer_in_flight_timeout_s=1.0)
    message = SpooledMessage("t", None, b"a")
    producer._current = message
    producer._send(message)
    assert producer.pending == 1 and producer.spool_depth == 0
    producer._expire_in_flight(now=time.monotonic() + 2)
    assert producer.pending == 0 and [m.value for m in producer.spool.read()] == [b"a"]
    assert not producer.connected  # later events queue behind the spooled one, in order
    # The client's own delivery timeout is shorter: one that never settled them is dropped.
    assert fake.closed and producer._producer is None and producer.stats.recycled == 1


def test_a_client_that_settles_none_of_a_replay_is_recycled_and_a_fresh_one_drains_the_spool(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # After broker restarts under load, kafka-python's producer took records and never settled
    # them again: the spool grew for minutes with the broker back (test_faults_kafka in CI).
    wedged = _FakeKafka(hang=True)
    producer = _stopped(tmp_path, wedged)
    producer.spool.append_many([SpooledMessage("t", None, v) for v in (b"a", b"b")])
    producer._replay()
    assert wedged.closed and producer._producer is None and producer.stats.recycled == 1
    assert producer.spool_depth == 2  # nothing is lost with the client
    fresh = _FakeKafka()
    monkeypatch.setattr("atalaia.kafka.clients.producer", lambda *args, **kwargs: fresh)
    producer._connect()
    producer._replay()
    assert fresh.sent == [b"a", b"b"] and producer.spool_depth == 0 and producer.connected
