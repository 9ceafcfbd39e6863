from __future__ import annotations

from pathlib import Path

from atalaia.settings import Settings
from producers.sdk import EventProducer
from producers.spool import Spool, SpooledMessage


def test_spool_is_fifo_and_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    spool = Spool(path)
    for i in range(5):
        spool.append(SpooledMessage("t", None if i % 2 else b"k", f"v{i}".encode()))
    spool.drop_first(2)
    reopened = Spool(path)
    assert len(reopened) == 3
    assert [m.value for m in reopened.read()] == [b"v2", b"v3", b"v4"]


def test_torn_last_line_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    spool = Spool(path)
    spool.append(SpooledMessage("t", b"k", b"ok"))
    with path.open("a") as fh:
        fh.write('{"topic": "t", "key": nu')  # a crash mid-write
    assert [m.value for m in Spool(path).read()] == [b"ok"]


def test_unreachable_broker_spools_everything(tmp_path: Path) -> None:
    from atalaia.events import FeedbackEvent

    settings = Settings(home=tmp_path, kafka_bootstrap="127.0.0.1:1")
    producer = EventProducer(settings, client_id="unit")
    events = [FeedbackEvent(inference_event_id=__import__("uuid").uuid4(), rating=1) for _ in range(20)]
    for ev in events:
        producer.emit(ev)
    producer.close(timeout=20)
    assert producer.stats.lost == 0
    assert producer.spool_depth == 20
    assert [m.key for m in producer.spool.read()] == [ev.key for ev in events]


def test_unwritable_spool_counts_the_loss(tmp_path: Path) -> None:
    from atalaia.events import FeedbackEvent

    blocker = tmp_path / "file"
    blocker.write_text("")
    settings = Settings(home=tmp_path, kafka_bootstrap="127.0.0.1:1", spool_dir=tmp_path)
    producer = EventProducer(settings, client_id="unit", start=False)
    producer.spool.path = blocker / "cannot" / "be.jsonl"  # a path under a file: every write fails
    producer._spool(
        SpooledMessage("t", None, FeedbackEvent(inference_event_id=__import__("uuid").uuid4(), rating=0).to_json())
    )
    assert producer.stats.lost == 1


def test_pii_is_redacted_before_the_event_leaves_the_process(tmp_path: Path) -> None:
    import json

    from atalaia.events import ChatMessage, InferenceEvent

    settings = Settings(home=tmp_path, kafka_bootstrap="127.0.0.1:1", redact_pii=True)
    producer = EventProducer(settings, client_id="pii", start=False)
    event = InferenceEvent(
        service="s",
        model_version="m",
        response="Write to ana.souza@example.com or call +55 11 91234-5678.",
        messages=[ChatMessage(role="user", content="My CPF is 123.456.789-09, card 4111 1111 1111 1111")],
        latency_ms=1,
        prompt_tokens=1,
        completion_tokens=1,
        cost=0,
    )
    producer.emit(event)
    producer.close(timeout=5)  # the sender never started: close() spools what is queued
    (spooled,) = producer.spool.read()
    text = spooled.value.decode()
    for secret in ("ana.souza@example.com", "91234-5678", "123.456.789-09", "4111 1111 1111 1111"):
        assert secret not in text
    body = json.loads(text)
    assert body["metadata"]["pii_redacted"] == {"email": 1, "phone": 1, "cpf": 1, "card": 1}
    assert "[EMAIL]" in body["response"] and "[CPF]" in body["messages"][0]["content"]
