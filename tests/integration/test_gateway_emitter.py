"""The gateway's event process against the real broker: every event arrives, across a child's death."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest
from kafka import KafkaConsumer

from atalaia.events import InferenceEvent, parse_event
from atalaia.settings import Settings
from atalaia.topics import ensure_topics
from gateway.emitter import ProcessEmitter

pytestmark = pytest.mark.integration


def _event(i: int) -> InferenceEvent:
    return InferenceEvent(
        service="gw-test", model_version="m", messages=[], response=f"answer {i}", latency_ms=1.0,
        prompt_tokens=1, completion_tokens=1, cost=0.0,
    )  # fmt: skip


class _Reader:
    """One consumer of the inference topic from its start, read up to a count."""

    def __init__(self, settings: Settings) -> None:
        self.consumer = KafkaConsumer(
            settings.topic("inference"),
            bootstrap_servers=settings.bootstrap_servers,
            auto_offset_reset="earliest",
            group_id=None,
        )
        self.ids: list[str] = []

    def until(self, n: int, timeout: float = 60) -> list[str]:
        deadline = time.monotonic() + timeout
        while len(self.ids) < n and time.monotonic() < deadline:
            for records in self.consumer.poll(timeout_ms=200).values():
                self.ids.extend(str(parse_event(rec.value).event_id) for rec in records)
        return self.ids


def test_events_arrive_once_across_a_killed_child(isolated_settings: Settings) -> None:
    ensure_topics(isolated_settings)
    emitter = ProcessEmitter(isolated_settings, client_id="gw-itest")
    reader = _Reader(isolated_settings)
    sent = [_event(i) for i in range(600)]

    async def traffic() -> None:
        for ev in sent[:200]:
            emitter.emit(ev)
        # Let the first child deliver what it read, then kill it: what follows goes into the pipe
        # while no child reads it, and the successor (started from the loop) must deliver it.
        assert len(await asyncio.to_thread(reader.until, 200)) == 200
        first = emitter._proc.pid
        os.kill(first, signal.SIGKILL)
        await asyncio.sleep(0.2)
        for ev in sent[200:]:
            emitter.emit(ev)
            await asyncio.sleep(0)
        for _ in range(100):
            if emitter._proc.pid != first and emitter._proc.poll() is None:
                break
            await asyncio.sleep(0.1)

    asyncio.run(traffic())
    emitter.close(timeout=60)
    assert emitter.restarts >= 1
    ids = reader.until(600)
    reader.consumer.close()
    assert sorted(ids) == sorted(str(e.event_id) for e in sent)  # all, once each


def test_events_written_while_no_child_reads_are_delivered_at_close(isolated_settings: Settings) -> None:
    ensure_topics(isolated_settings)
    emitter = ProcessEmitter(isolated_settings, client_id="gw-itest-close")
    os.kill(emitter._proc.pid, signal.SIGKILL)
    emitter._proc.wait(10)
    sent = [_event(i) for i in range(50)]
    for ev in sent:  # not on a loop: nothing restarts the child before close()
        emitter.emit(ev)
    emitter.close(timeout=60)
    reader = _Reader(isolated_settings)
    assert sorted(reader.until(50)) == sorted(str(e.event_id) for e in sent)
