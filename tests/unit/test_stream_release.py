"""A stream the consumer stops reading frees the model at once, without the garbage collector.

An ONNX Runtime stream generates in the consumer's thread and holds the generator's lock
between ``next()`` calls, so a stream kept alive by a reference cycle (or never closed by the
HTTP layer after a disconnect) made the next request wait for ``gc``. Every test here runs with
``gc`` disabled: the lock must be free the moment the stream is closed or dropped.
"""

from __future__ import annotations

import asyncio
import gc
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from atalaia.models.generator import ChatResult, ChatStream, Generator
from atalaia.settings import Settings
from tests.unit.tiny_models import tiny_chat_generator

PROMPT = [{"role": "user", "content": "Write a long story about a lighthouse keeper and the sea."}]


@pytest.fixture
def no_gc() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@pytest.fixture(scope="module")
def ort_generator(ort_int4_dir: Path) -> Generator:
    return Generator.load(ort_int4_dir)


def _lock_is_free(gen: Generator) -> bool:
    if not gen._lock.acquire(blocking=False):
        return False
    gen._lock.release()
    return True


# ---------------------------------------------------------------- ORT backend


@pytest.mark.parametrize("how", ["close", "drop"])
@pytest.mark.usefixtures("no_gc")
def test_ort_stream_frees_the_lock_at_once(ort_generator: Generator, how: str) -> None:
    stream = ort_generator.chat_stream(PROMPT, max_tokens=64)
    next(stream), next(stream)
    assert not _lock_is_free(ort_generator)  # the premise: a live stream holds the model
    if how == "close":
        stream.close()
        assert stream.result is None
    else:
        del stream
    assert _lock_is_free(ort_generator)


@pytest.mark.usefixtures("no_gc")
def test_ort_stream_sets_its_result(ort_generator: Generator) -> None:
    stream = ort_generator.chat_stream(PROMPT, max_tokens=4)
    text = "".join(stream)
    assert stream.result is not None and stream.result.text == text
    assert stream.result.completion_tokens == 4 and _lock_is_free(ort_generator)


# ---------------------------------------------------------------- transformers backend


@pytest.fixture(scope="module")
def slow_tiny_generator(models_dir: Path) -> Generator:
    """A tiny random Llama with the real tokenizer, slowed to 5 ms a step so that an
    uncancelled generation of 400 tokens visibly outlasts a cancelled one."""
    gen = tiny_chat_generator(layers=1, max_positions=512)
    model = gen.model
    forward = model.forward

    def slow_forward(*args: Any, **kwargs: Any) -> Any:
        time.sleep(0.005)
        return forward(*args, **kwargs)

    model.forward = slow_forward  # type: ignore[method-assign]
    return gen


@pytest.mark.usefixtures("no_gc")
def test_transformers_stream_dropped_stops_generating(slow_tiny_generator: Generator) -> None:
    gen = slow_tiny_generator
    produced: list[int] = []
    generate = gen.model.generate

    def recording_generate(*args: Any, **kwargs: Any) -> Any:
        out = generate(*args, **kwargs)
        produced.append(int(out.shape[1] - kwargs["input_ids"].shape[1]))
        return out

    gen.model.generate = recording_generate
    try:
        stream = gen.chat_stream(PROMPT, max_tokens=400)
        next(stream)
        del stream
        # The worker releases the lock when generate() returns: at the next token, not after 400.
        assert gen._lock.acquire(timeout=10)
        gen._lock.release()
    finally:
        del gen.model.generate
    assert produced and produced[0] < 200


# ---------------------------------------------------------------- ChatStream


def test_close_from_another_thread_while_next_runs() -> None:
    """The HTTP layer may close a stream while a pool thread is inside ``next()``: the close
    must not raise ("generator already executing") and the pieces are closed as it returns."""
    entered, proceed = threading.Event(), threading.Event()
    finished: list[str] = []

    def pieces() -> Iterator[str]:
        try:
            yield "a"
            entered.set()
            proceed.wait(5)
            yield "b"
            yield "c"
        finally:
            finished.append("closed")

    stream = ChatStream(pieces())
    assert next(stream) == "a"
    got: list[str] = []
    consumer = threading.Thread(target=lambda: got.append(next(stream)))
    consumer.start()
    assert entered.wait(5)
    stream.close()  # next() is running in the consumer thread
    assert finished == []
    proceed.set()
    consumer.join(5)
    assert got == ["b"] and finished == ["closed"]
    with pytest.raises(StopIteration):
        next(stream)
    stream.close()  # idempotent


def test_result_is_the_generators_return_value() -> None:
    result = ChatResult("ab", 3, 2, "stop")

    def pieces() -> Iterator[str]:
        yield "a"
        yield "b"
        return result  # type: ignore[misc]

    stream = ChatStream(pieces())
    assert "".join(stream) == "ab" and stream.result is result


# ---------------------------------------------------------------- the SSE route


class _EndlessGenerator:
    """Streams pieces until closed, and records that it was."""

    context_length = 4096

    def __init__(self) -> None:
        self.closed = threading.Event()

    def chat(self, messages, max_tokens=128, temperature=0.0, top_p=1.0, stop=None) -> ChatResult:  # type: ignore[no-untyped-def]
        return ChatResult("x", 4, 1, "stop")

    def chat_stream(self, messages, max_tokens=128, temperature=0.0, top_p=1.0, stop=None) -> ChatStream:  # type: ignore[no-untyped-def]
        closed = self.closed

        def pieces() -> Iterator[str]:
            try:
                while True:
                    time.sleep(0.005)
                    yield "word "
            finally:
                closed.set()

        return ChatStream(pieces())


class _FailingGenerator(_EndlessGenerator):
    def chat_stream(self, messages, max_tokens=128, temperature=0.0, top_p=1.0, stop=None) -> ChatStream:  # type: ignore[no-untyped-def]
        def pieces() -> Iterator[str]:
            yield "half"
            raise RuntimeError("generation failed: boom")

        return ChatStream(pieces())


def _request(settings: Settings) -> dict[str, object]:
    return {
        "model": settings.model_version,
        "messages": [{"role": "user", "content": "Tell me a story."}],
        "max_tokens": 8,
        "stream": True,
    }


async def _disconnect_after_first_content(app: Any, body: bytes) -> list[bytes]:
    """Drive the ASGI app as uvicorn does (ASGI 2.3) and hang up after the first content chunk."""
    sent: list[bytes] = []
    got_content = asyncio.Event()
    requested = False

    async def receive() -> dict[str, Any]:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": body, "more_body": False}
        await got_content.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            sent.append(message.get("body", b""))
            if b'"content"' in message.get("body", b""):
                got_content.set()

    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/chat/completions",
        "raw_path": b"/v1/chat/completions",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"host", b"test")],
        "client": ("127.0.0.1", 1234),
        "server": ("test", 80),
    }
    await asyncio.wait_for(app(scope, receive, send), 10)
    return sent


@pytest.mark.usefixtures("no_gc")
def test_route_closes_the_stream_when_the_client_disconnects(tmp_path: Path) -> None:
    from inference.app import create_app

    settings = Settings(home=tmp_path, max_new_tokens_limit=32)
    gen = _EndlessGenerator()
    app = create_app(settings, gen, _NullProducer())
    sent = asyncio.run(_disconnect_after_first_content(app, json.dumps(_request(settings)).encode()))
    assert any(b'"content"' in chunk for chunk in sent)
    # Closed by the route itself when streaming ended, not by a later garbage collection.
    assert gen.closed.is_set()


def test_route_ends_a_failed_stream_with_an_error_event(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from inference.app import create_app

    settings = Settings(home=tmp_path, max_new_tokens_limit=32)
    client = TestClient(create_app(settings, _FailingGenerator(), _NullProducer()))
    with client.stream("POST", "/v1/chat/completions", json=_request(settings)) as r:
        assert r.status_code == 200
        lines = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert json.loads(lines[1][6:])["choices"][0]["delta"] == {"content": "half"}
    error = json.loads(lines[-1][6:])["error"]
    assert error["type"] == "server_error" and "boom" not in error["message"]
    assert "data: [DONE]" not in lines


class _NullProducer:
    connected = True
    spool_depth = 0

    def emit(self, event: object, topic: str | None = None) -> None:
        pass
