"""The spool's segment files and read offset: replay moves an offset instead of rewriting the
spool (O(1) writes and O(chunk) reads per chunk), read segments leave the disk, and a crash
between the broker's acknowledgement and the offset write costs duplicates, never losses."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

import producers.spool as spool_module
from atalaia.events import FeedbackEvent, parse_event
from atalaia.settings import Settings
from atalaia.storage import repository
from atalaia.storage import tables as t
from atalaia.storage.db import get_engine, upgrade
from producers.sdk import EventProducer
from producers.spool import Spool, SpooledMessage
from tests.unit.test_delivery import _FakeKafka, _inference


def _messages(n: int, size: int = 0) -> list[SpooledMessage]:
    return [SpooledMessage("t", None, f"v{i}".encode() + b"x" * size) for i in range(n)]


def test_replay_moves_an_offset_and_never_rewrites_the_spool(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.jsonl")
    spool.append_many(_messages(2_000))
    before = spool.path.read_bytes()
    inode = spool.path.stat().st_ino
    spool.drop_first(1_000)
    # Same file, same bytes: only the offset (segment, byte) moved.
    assert spool.path.stat().st_ino == inode and spool.path.read_bytes() == before
    assert json.loads(spool.offset_path.read_text())["segment"] == 0
    assert [m.value for m in Spool(spool.path).read(limit=2)] == [b"v1000", b"v1001"]
    assert len(Spool(spool.path)) == 1_000


def test_reading_a_chunk_costs_the_chunk_not_the_spool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = Spool(tmp_path / "s.jsonl")
    spool.append_many(_messages(1_000))
    spool.drop_first(900)
    decoded = []
    real = spool_module._decode

    def counting(line: Any) -> Any:
        decoded.append(line)
        return real(line)

    monkeypatch.setattr(spool_module, "_decode", counting)
    assert [m.value for m in spool.read(limit=10)] == [f"v{i}".encode() for i in range(900, 910)]
    assert len(decoded) <= 11  # the records asked for (and one to see the limit), not the 900 before


def test_read_segments_are_deleted_and_numbers_only_grow(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.jsonl", segment_bytes=1_000)
    spool.append_many(_messages(10, size=100))  # one batch: one segment, whatever its size
    for batch in range(9):
        spool.append_many(_messages(10, size=100)[batch : batch + 1])
    files = spool.segment_files()
    assert len(files) >= 3 and files[0] == spool.path
    spool.drop_first(12)
    assert not files[0].exists()  # wholly read
    assert [p.exists() for p in files[1:]] == [True] * (len(files) - 1)
    reopened = Spool(spool.path, segment_bytes=1_000)
    assert len(reopened) == 7 and reopened.read()[0].value.startswith(b"v2")
    reopened.clear()
    assert reopened.segment_files() == [] and not any(p.exists() for p in files)
    reopened.append(SpooledMessage("t", None, b"after"))
    (new,) = reopened.segment_files()
    assert new not in files  # a fresh number: no offset left on disk can name it
    assert [m.value for m in Spool(spool.path).read()] == [b"after"]


def test_a_stale_offset_never_skips_records_appended_after_a_drain(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.jsonl")
    spool.append_many(_messages(3))
    spool.drop_first(1)
    stale = spool.offset_path.read_text()  # (0, after v0): what a crash could leave behind
    spool.drop_first(2)  # drained: every segment deleted
    spool.append_many(_messages(2))
    spool.offset_path.write_text(stale)  # the drain's offset write was lost
    assert [m.value for m in Spool(spool.path).read()] == [b"v0", b"v1"]


def test_a_torn_tail_in_a_later_segment_is_cut_at_open(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.jsonl", segment_bytes=200)
    for message in _messages(6, size=60):
        spool.append(message)
    last = spool.segment_files()[-1]
    assert last != spool.path
    with last.open("a") as fh:
        fh.write('{"topic": "t", "key": nu')  # a crash mid-append
    reopened = Spool(spool.path, segment_bytes=200)
    assert len(reopened) == 6
    reopened.append(SpooledMessage("t", None, b"next"))
    assert [m.value for m in Spool(spool.path).read()][-2:] == [_messages(6, size=60)[-1].value, b"next"]


def test_records_delivered_out_of_turn_are_blanked_in_place(tmp_path: Path) -> None:
    fake = _FakeKafka()
    producer = EventProducer(Settings(home=tmp_path, kafka_bootstrap="127.0.0.1:1"), client_id="f", start=False)
    producer._producer = fake
    producer.spool.append_many([SpooledMessage("t", None, v) for v in (b"a", b"down1", b"b", b"c")])
    size = producer.spool.path.stat().st_size
    producer._replay()
    assert producer.spool.path.stat().st_size == size  # nothing rewritten
    assert [m.value for m in Spool(producer.spool.path).read()] == [b"down1"]


class _Crash(BaseException):
    """The process dies here."""


def test_a_crash_between_ack_and_offset_write_duplicates_and_the_sinks_store_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(home=tmp_path, kafka_bootstrap="127.0.0.1:1")
    events = [_inference() for _ in range(3)] + [FeedbackEvent(inference_event_id=uuid.uuid4(), rating=1)]
    first = EventProducer(settings, client_id="crash", start=False)
    first._producer = before_crash = _FakeKafka()
    first.spool.append_many([SpooledMessage("t", e.key, e.to_json()) for e in events])

    def crash(self: Spool) -> None:
        raise _Crash

    with monkeypatch.context() as patch:
        patch.setattr(Spool, "_write_offset", crash)
        with pytest.raises(_Crash):
            first._replay()  # the broker acknowledged the chunk; the offset never reached the disk
    assert len(before_crash.sent) == len(events)

    restarted = EventProducer(settings, client_id="crash", start=False)
    restarted._producer = after_crash = _FakeKafka()
    assert restarted.spool_depth == len(events)  # nothing lost
    restarted._replay()
    assert after_crash.sent == before_crash.sent and restarted.spool_depth == 0  # duplicates

    # Both copies reach the sink, which stores each event once (idempotent by event_id).
    url = f"sqlite:///{tmp_path / 'sink.db'}"
    upgrade(url)
    engine = get_engine(url)
    received = [parse_event(v) for v in before_crash.sent + after_crash.sent]
    with engine.begin() as conn:
        for event in received:
            if event.type == "inference":
                repository.store_inference_batch(conn, [event], [])
            else:
                repository.store_feedback_batch(conn, [event])
    with engine.connect() as conn:
        stored = conn.execute(select(t.inference_events.c.event_id, func.count()).group_by("event_id")).all()
        feedback = conn.execute(select(func.count()).select_from(t.feedback)).scalar()
    assert sorted(str(e) for e, _ in stored) == sorted(str(e.event_id) for e in events[:3])
    assert all(n == 1 for _, n in stored) and feedback == 1
