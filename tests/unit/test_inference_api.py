"""The HTTP contract of the inference service, with a fake generator and a recording producer."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from atalaia.events import FeedbackEvent, InferenceEvent
from atalaia.models.generator import ChatResult, ChatStream, PromptTooLongError
from atalaia.settings import Settings
from inference.app import create_app


class FakeGenerator:
    context_length = 64

    def _check(self, messages: list[dict[str, str]], max_tokens: int) -> int:
        prompt = sum(len(m["content"].split()) for m in messages) + 4
        if prompt + max_tokens > self.context_length:
            raise PromptTooLongError(prompt, max_tokens, self.context_length)
        return prompt

    def chat(self, messages, max_tokens=128, temperature=0.0, top_p=1.0, stop=None) -> ChatResult:  # type: ignore[no-untyped-def]
        prompt = self._check(messages, max_tokens)
        return ChatResult("Thirty days.", prompt, 3, "stop")

    def chat_stream(self, messages, max_tokens=128, temperature=0.0, top_p=1.0, stop=None) -> ChatStream:  # type: ignore[no-untyped-def]
        prompt = self._check(messages, max_tokens)
        stream = ChatStream(iter(()))

        def pieces() -> Iterator[str]:
            yield from ("Thirty", " days.")
            stream.result = ChatResult("Thirty days.", prompt, 3, "stop")

        stream._pieces = pieces()
        return stream


class RecordingProducer:
    def __init__(self) -> None:
        self.events: list[object] = []
        self.connected = True
        self.spool_depth = 0

    def emit(self, event: object, topic: str | None = None) -> None:
        self.events.append(event)


@pytest.fixture
def client_and_events(tmp_path: Path) -> tuple[TestClient, RecordingProducer, Settings]:
    settings = Settings(home=tmp_path, max_new_tokens_limit=32)
    producer = RecordingProducer()
    return TestClient(create_app(settings, FakeGenerator(), producer)), producer, settings


def _body(settings: Settings, **extra: object) -> dict:
    return {
        "model": settings.model_version,
        "messages": [{"role": "user", "content": "How many vacation days?"}],
    } | extra


def test_completion_emits_one_event(client_and_events) -> None:  # type: ignore[no-untyped-def]
    client, producer, settings = client_and_events
    r = client.post(
        "/v1/chat/completions", json=_body(settings, max_tokens=8, metadata={"reference": "30 days", "team": "hr"})
    )
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "chat.completion" and body["choices"][0]["message"]["content"] == "Thirty days."
    (event,) = producer.events
    assert isinstance(event, InferenceEvent)
    assert body["id"] == f"chatcmpl-{event.event_id}" == f"chatcmpl-{r.headers['x-atalaia-event-id']}"
    assert event.reference == "30 days" and event.metadata["team"] == "hr"
    assert event.prompt_tokens == body["usage"]["prompt_tokens"] and event.cost > 0 and event.latency_ms >= 0


def test_streaming_is_openai_sse(client_and_events) -> None:  # type: ignore[no-untyped-def]
    client, producer, settings = client_and_events
    with client.stream("POST", "/v1/chat/completions", json=_body(settings, stream=True)) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == "Thirty days." and chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert len(producer.events) == 1


def test_openai_client_talks_to_it(client_and_events) -> None:  # type: ignore[no-untyped-def]
    openai = pytest.importorskip("openai")
    client, _, settings = client_and_events
    api = openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=client)
    assert [m.id for m in api.models.list()] == [settings.model_version]
    reply = api.chat.completions.create(
        model=settings.model_version, messages=[{"role": "user", "content": "hi"}], max_tokens=4
    )
    assert reply.choices[0].message.content == "Thirty days."
    with pytest.raises(openai.NotFoundError):
        api.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "hi"}])


@pytest.mark.parametrize(
    ("payload", "status", "needle"),
    [
        ("{not json", 400, "not valid JSON"),
        ({"model": "x"}, 400, "messages"),
        ({"messages": []}, 400, "model"),
        ("EMPTY_MESSAGES", 400, "messages"),
        ("UNKNOWN_MODEL", 404, "does not exist"),
        ("NEGATIVE", 400, "max_tokens"),
        ("HUGE", 400, "at most 32"),
        ("TOO_LONG", 400, "context length"),
        ("BAD_ROLE", 400, "role"),
        ([1, 2, 3], 400, ""),
    ],
)
def test_bad_requests_get_openai_errors(client_and_events, payload, status: int, needle: str) -> None:  # type: ignore[no-untyped-def]
    client, producer, settings = client_and_events
    good = _body(settings)
    payloads = {
        "EMPTY_MESSAGES": good | {"messages": []},
        "UNKNOWN_MODEL": good | {"model": "gpt-9"},
        "NEGATIVE": good | {"max_tokens": -5},
        "HUGE": good | {"max_tokens": 10**9},
        "TOO_LONG": good | {"messages": [{"role": "user", "content": "word " * 60}], "max_tokens": 8},
        "BAD_ROLE": good | {"messages": [{"role": "wizard", "content": "x"}]},
    }
    payload = payloads.get(payload, payload) if isinstance(payload, str) else payload
    if isinstance(payload, str):
        r = client.post("/v1/chat/completions", content=payload, headers={"content-type": "application/json"})
    else:
        r = client.post("/v1/chat/completions", json=payload)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert needle in error["message"] and error["type"] == "invalid_request_error"
    assert producer.events == []


def test_feedback(client_and_events) -> None:  # type: ignore[no-untyped-def]
    client, producer, _ = client_and_events
    target = uuid.uuid4()
    r = client.post(
        "/v1/feedback", json={"completion_id": f"chatcmpl-{target}", "rating": -1, "corrected_answer": "30 days"}
    )
    assert r.status_code == 202
    (event,) = producer.events
    assert (
        isinstance(event, FeedbackEvent) and event.inference_event_id == target and event.corrected_answer == "30 days"
    )
    assert client.post("/v1/feedback", json={"completion_id": "nope", "rating": 1}).status_code == 400
    assert client.post("/v1/feedback", json={"completion_id": f"chatcmpl-{target}"}).status_code == 400
    assert client.post("/v1/feedback", json={"completion_id": f"chatcmpl-{target}", "rating": 7}).status_code == 400


def test_health_and_prometheus(client_and_events) -> None:  # type: ignore[no-untyped-def]
    client, _, settings = client_and_events
    health = client.get("/healthz").json()
    assert health["model"]["version"] == settings.model_version and health["kafka"]["connected"] is True
    client.post("/v1/chat/completions", json=_body(settings))
    text = client.get("/metrics").text
    assert 'atalaia_requests_total{model_version="smollm2-135m-instruct@base",status="ok"} 1.0' in text
    assert "atalaia_request_latency_seconds_bucket" in text and "atalaia_spool_depth 0.0" in text
    assert client.get("/nope").status_code == 404


class FakeRetriever:
    def search(self, query: object, k: int = 3) -> list[tuple[object, float]]:
        from inference.rag import Passage

        return [
            (
                Passage(f"annual-leave#{i}", "annual-leave", "Annual leave", f"Annual leave\n1.{i} Thirty days."),
                0.9 - i / 10,
            )
            for i in range(1, k + 1)
        ]


class FakeQueryEmbedder:
    def encode(self, texts: list[str]) -> object:
        import numpy as np

        return np.array([[1.0, 0.0] if "vacation" in t.lower() else [0.0, 1.0] for t in texts], dtype=np.float32)


class PromptRecordingGenerator(FakeGenerator):
    def __init__(self) -> None:
        self.calls: list[list[dict[str, str]]] = []

    def chat(self, messages, max_tokens=128, temperature=0.0, top_p=1.0, stop=None) -> ChatResult:  # type: ignore[no-untyped-def]
        self.calls.append(messages)
        return super().chat(messages, max_tokens, temperature, top_p, stop)


def test_rag_passages_go_into_the_prompt_and_the_event(tmp_path: Path) -> None:
    from inference.cache import ResponseCache

    settings = Settings(home=tmp_path, max_new_tokens_limit=32, rag_top_k=2)
    generator, producer = PromptRecordingGenerator(), RecordingProducer()
    generator.context_length = 512
    client = TestClient(
        create_app(
            settings,
            generator,
            producer,
            retriever=FakeRetriever(),
            cache=ResponseCache(semantic_threshold=0.95),
            embedder=FakeQueryEmbedder(),
        )
    )
    body = _body(settings, max_tokens=8)
    first = client.post("/v1/chat/completions", json=body)
    assert first.status_code == 200 and "x-atalaia-cache" not in first.headers
    system = generator.calls[0][0]
    assert system["role"] == "system" and "[Annual leave (annual-leave#1)]" in system["content"]
    assert generator.calls[0][1:] == [{"role": "user", "content": "How many vacation days?"}]
    event = producer.events[0]
    assert isinstance(event, InferenceEvent) and [p.id for p in event.context] == ["annual-leave#1", "annual-leave#2"]
    assert not event.cache_hit
    assert [c["id"] for c in first.json()["citations"]] == ["annual-leave#1", "annual-leave#2"]

    # The same question again: served from the cache, marked in the response, the event and /metrics.
    again = client.post("/v1/chat/completions", json=body)
    assert again.headers["x-atalaia-cache"] == "exact" and len(generator.calls) == 1
    assert again.json()["choices"] == first.json()["choices"] and again.json()["id"] != first.json()["id"]
    hit = producer.events[1]
    assert isinstance(hit, InferenceEvent) and hit.cache_hit and hit.cost == 0 and hit.context == event.context
    # A differently worded question with the same meaning (same embedding here): a semantic hit.
    reworded = client.post(
        "/v1/chat/completions",
        json=_body(settings, max_tokens=8)
        | {"messages": [{"role": "user", "content": "Vacation: how many days do I get?"}]},
    )
    assert reworded.headers["x-atalaia-cache"] == "semantic" and len(generator.calls) == 1
    # Sampling requests are never cached.
    client.post("/v1/chat/completions", json=body | {"temperature": 0.7})
    assert len(generator.calls) == 2
    text = client.get("/metrics").text
    assert (
        'atalaia_cache_hits_total{kind="exact"} 1.0' in text and 'atalaia_cache_hits_total{kind="semantic"} 1.0' in text
    )


def test_streamed_answers_are_cached_and_replayed_as_streams(tmp_path: Path) -> None:
    from inference.cache import ResponseCache

    settings = Settings(home=tmp_path, max_new_tokens_limit=32)
    generator, producer = PromptRecordingGenerator(), RecordingProducer()
    streams: list[object] = []
    real_stream = generator.chat_stream
    generator.chat_stream = lambda *a, **k: streams.append(a) or real_stream(*a, **k)  # type: ignore[method-assign]
    client = TestClient(create_app(settings, generator, producer, cache=ResponseCache(semantic_threshold=None)))

    def stream_text() -> tuple[str, dict[str, str]]:
        with client.stream("POST", "/v1/chat/completions", json=_body(settings, max_tokens=8, stream=True)) as r:
            assert r.status_code == 200
            lines = [line for line in r.iter_lines() if line.startswith("data: ")]
            headers = dict(r.headers)
        assert lines[-1] == "data: [DONE]"
        chunks = [json.loads(line[6:]) for line in lines[:-1]]
        assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
        return "".join(c["choices"][0]["delta"].get("content", "") for c in chunks), headers

    first, headers = stream_text()
    assert first == "Thirty days." and "x-atalaia-cache" not in headers
    again, headers = stream_text()
    assert again == first and headers["x-atalaia-cache"] == "exact"
    assert len(streams) == 1 and generator.calls == []  # generated once, replayed from the cache
    plain = client.post("/v1/chat/completions", json=_body(settings, max_tokens=8))
    assert plain.headers["x-atalaia-cache"] == "exact" and plain.json()["choices"][0]["message"]["content"] == first
    events = [e for e in producer.events if isinstance(e, InferenceEvent)]
    assert [e.cache_hit for e in events] == [False, True, True]


def test_multimodal_parts_of_any_type_are_recorded_never_a_500(client_and_events) -> None:  # type: ignore[no-untyped-def]
    client, producer, settings = client_and_events
    content = [
        {"type": "text", "text": "What does this say?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,aGVsbG8="}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
        {"type": "input_audio", "input_audio": {"data": "AAEC", "format": "wav"}},
        {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERg==", "filename": "a.pdf"}},
        {"type": "hologram", "payload": [1, 2]},
        {"no_type": True},
    ]
    r = client.post("/v1/chat/completions", json=_body(settings, messages=[{"role": "user", "content": content}]))
    assert r.status_code == 200, r.text
    (event,) = producer.events
    parts = event.messages[0].content
    assert [p.type for p in parts] == ["text", "image", "image", "audio", "file", "hologram", "unknown"]
    assert event.messages[0].text == "What does this say?"
    image, link, audio, pdf = parts[1], parts[2], parts[3], parts[4]
    assert (image.mime_type, image.size_bytes, image.data) == ("image/png", 5, None) and len(image.sha256) == 64
    assert link.uri == "https://example.com/cat.png" and link.sha256 is None
    assert (audio.mime_type, audio.size_bytes) == ("audio/wav", 3)
    assert pdf.mime_type == "application/pdf" and pdf.uri == "a.pdf"
    InferenceEvent.model_validate_json(event.to_json())  # the event round-trips
    # Parts that are not objects are a 400, not a 500.
    r = client.post("/v1/chat/completions", json=_body(settings, messages=[{"role": "user", "content": [1, "x"]}]))
    assert r.status_code == 400


def test_media_bytes_are_kept_only_when_configured(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, event_keep_media=True, max_new_tokens_limit=32)
    producer = RecordingProducer()
    client = TestClient(create_app(settings, FakeGenerator(), producer))
    content = [
        {"type": "text", "text": "hi"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,aGVsbG8="}},
    ]
    r = client.post("/v1/chat/completions", json=_body(settings, messages=[{"role": "user", "content": content}]))
    assert r.status_code == 200, r.text
    assert producer.events[0].messages[0].content[1].data == "aGVsbG8="


def test_stream_with_include_usage_ends_with_the_usage(client_and_events) -> None:  # type: ignore[no-untyped-def]
    client, producer, settings = client_and_events
    body = _body(settings, stream=True, stream_options={"include_usage": True})
    with client.stream("POST", "/v1/chat/completions", json=body) as r:
        lines = [line for line in r.iter_lines() if line.startswith("data: ")]
    last = json.loads(lines[-2][6:])
    assert last["choices"] == [] and last["usage"]["completion_tokens"] == producer.events[0].completion_tokens


def test_request_limits_answer_413_and_400_with_a_clear_message(tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path, max_new_tokens_limit=32, request_max_bytes=20_000, request_metadata_max_bytes=1_000
    )
    producer = RecordingProducer()
    client = TestClient(create_app(settings, FakeGenerator(), producer))
    # A body over the cap: refused before it is parsed, whether its length is declared or streamed.
    big = {**_body(settings), "messages": [{"role": "user", "content": "x" * 30_000}]}
    r = client.post("/v1/chat/completions", json=big)
    assert r.status_code == 413 and "ATALAIA_REQUEST_MAX_BYTES" in r.json()["error"]["message"]
    chunked = client.post(
        "/v1/chat/completions",
        content=iter([json.dumps(big).encode()[:15_000], json.dumps(big).encode()[15_000:]]),
        headers={"content-type": "application/json"},
    )
    assert chunked.status_code == 413
    # Metadata over its own cap: a 400 naming the field; nothing is emitted.
    r = client.post("/v1/chat/completions", json={**_body(settings), "metadata": {"blob": "y" * 2_000}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "metadata"
    assert "ATALAIA_REQUEST_METADATA_MAX_BYTES" in r.json()["error"]["message"]
    fb = client.post(
        "/v1/feedback", json={"completion_id": f"chatcmpl-{uuid.uuid4()}", "rating": 1, "metadata": {"b": "z" * 2_000}}
    )
    assert fb.status_code == 400 and not producer.events
    # Under both caps: answered.
    assert client.post("/v1/chat/completions", json={**_body(settings), "metadata": {"k": "v"}}).status_code == 200


def test_health_reports_delivery_and_degrades_on_old_undelivered_events(tmp_path: Path) -> None:
    import time

    from producers.sdk import EventProducer
    from producers.spool import SpooledMessage

    settings = Settings(home=tmp_path, kafka_bootstrap="127.0.0.1:1", delivery_degraded_after_s=30)
    producer = EventProducer(settings, client_id="health", start=False)
    client = TestClient(create_app(settings, FakeGenerator(), producer))
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["delivery"]["oldest_undelivered_age_s"] is None
    producer.spool.append(SpooledMessage("t", None, b"{}", created=time.time() - 120))
    health = client.get("/healthz").json()
    delivery = health["delivery"]
    assert (
        health["status"] == "degraded" and delivery["spool_depth"] == 1 and delivery["oldest_undelivered_age_s"] >= 120
    )
    assert health["kafka"]["reachable"] is False and delivery["dead_lettered"] == 0 and delivery["lost"] == 0
    text = client.get("/metrics").text
    assert "atalaia_events_dead_lettered 0.0" in text and "atalaia_kafka_reachable 0.0" in text
    assert re.search(r"^atalaia_oldest_undelivered_age_seconds 1[2-9]\d", text, re.MULTILINE)


class TimedGenerator(FakeGenerator):
    """Notes its first token 20 ms into generation, as the real generator's clock does."""

    def _timed(self, prompt: int) -> ChatResult:
        import time

        start = time.perf_counter()
        time.sleep(0.03)
        return ChatResult("Thirty days.", prompt, 3, "stop", first_token_at=start + 0.02)

    def chat(self, messages, max_tokens=128, temperature=0.0, top_p=1.0, stop=None) -> ChatResult:  # type: ignore[no-untyped-def]
        return self._timed(self._check(messages, max_tokens))

    def chat_stream(self, messages, max_tokens=128, temperature=0.0, top_p=1.0, stop=None) -> ChatStream:  # type: ignore[no-untyped-def]
        prompt = self._check(messages, max_tokens)
        stream = ChatStream(iter(()))

        def pieces() -> Iterator[str]:
            result = self._timed(prompt)
            yield from ("Thirty", " days.")
            stream.result = result

        stream._pieces = pieces()
        return stream


def test_events_carry_the_time_to_first_token(tmp_path: Path) -> None:
    from inference.cache import ResponseCache

    settings = Settings(home=tmp_path, max_new_tokens_limit=32)
    producer = RecordingProducer()
    cache = ResponseCache(semantic_threshold=None)
    client = TestClient(create_app(settings, TimedGenerator(), producer, cache=cache))
    assert client.post("/v1/chat/completions", json=_body(settings, max_tokens=8)).status_code == 200
    with client.stream("POST", "/v1/chat/completions", json=_body(settings, max_tokens=9, stream=True)) as r:
        assert r.status_code == 200 and list(r.iter_lines())
    assert client.post("/v1/chat/completions", json=_body(settings, max_tokens=8)).headers["x-atalaia-cache"]
    plain, streamed, cached = [e for e in producer.events if isinstance(e, InferenceEvent)]
    for event in (plain, streamed):
        assert event.time_to_first_token_ms is not None
        assert 20.0 <= event.time_to_first_token_ms <= event.latency_ms
    # A cached answer generated no token: no time to first token to compare models by.
    assert cached.cache_hit and cached.time_to_first_token_ms is None
    # A generator that does not know (another backend) leaves it empty rather than guessing.
    plain_client = TestClient(create_app(settings, FakeGenerator(), producer))
    plain_client.post("/v1/chat/completions", json=_body(settings, max_tokens=7))
    assert producer.events[-1].time_to_first_token_ms is None  # type: ignore[attr-defined]
