"""The gateway's event process against the real broker: every call's event arrives, across a child's death."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid

import pytest
from kafka import KafkaConsumer

from atalaia.events import parse_event
from atalaia.settings import Settings
from atalaia.topics import ensure_topics
from gateway.calls import FinishedCall
from gateway.emitter import ProcessEmitter
from gateway.protocols import request_record

pytestmark = pytest.mark.integration

REQUEST = b'{"model": "claude-haiku-4-5", "max_tokens": 32, "messages": [{"role": "user", "content": "Hi"}]}'


def _call(i: int) -> FinishedCall:
    answer = (
        b'{"id": "msg_%d", "model": "claude-haiku-4-5", "content": [{"type": "text", "text": "answer %d"}], '
        b'"stop_reason": "end_turn", "usage": {"input_tokens": 8, "output_tokens": 2}}' % (i, i)
    )
    record = request_record("anthropic", {"model": "claude-haiku-4-5"})
    return FinishedCall("claude", "gw-test", 200, record, REQUEST, answer, 1.0, None)


def _id(call: FinishedCall) -> str:
    return str(uuid.UUID(call.event_id))


def _settings(settings: Settings) -> Settings:
    upstreams = {"claude": {"base_url": "http://127.0.0.1:9", "protocol": "anthropic"}}
    return settings.model_copy(update={"gateway_upstreams": upstreams})


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
    isolated_settings = _settings(isolated_settings)
    ensure_topics(isolated_settings)
    emitter = ProcessEmitter(isolated_settings, client_id="gw-itest")
    reader = _Reader(isolated_settings)
    sent = [_call(i) for i in range(600)]

    async def traffic() -> None:
        for call in sent[:200]:
            emitter.hand_off(call)
        # Let the first child deliver what it read, then kill it: what follows goes into the pipe
        # while no child reads it, and the successor (started from the loop) must deliver it.
        assert len(await asyncio.to_thread(reader.until, 200)) == 200
        first = emitter._proc.pid
        os.kill(first, signal.SIGKILL)
        await asyncio.sleep(0.2)
        for call in sent[200:]:
            emitter.hand_off(call)
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
    assert sorted(ids) == sorted(_id(c) for c in sent)  # all, once each


def test_events_written_while_no_child_reads_are_delivered_at_close(isolated_settings: Settings) -> None:
    isolated_settings = _settings(isolated_settings)
    ensure_topics(isolated_settings)
    emitter = ProcessEmitter(isolated_settings, client_id="gw-itest-close")
    os.kill(emitter._proc.pid, signal.SIGKILL)
    emitter._proc.wait(10)
    sent = [_call(i) for i in range(50)]
    for call in sent:  # not on a loop: nothing restarts the child before close()
        emitter.hand_off(call)
    emitter.close(timeout=60)
    reader = _Reader(isolated_settings)
    assert sorted(reader.until(50)) == sorted(_id(c) for c in sent)
