"""Property-based tests of every HTTP route of the inference service: random and adversarial
bodies (wrong types, huge and odd strings, deep nesting, invalid UTF-8), random headers and
query strings. Nothing returns a 5xx; a bad request gets a 4xx in the OpenAI error shape; an
accepted request's event can be serialised (the real producer SDK, not started, serialises each
emitted event), so no request reaches a 500 through the event path either.

A fake generator and fake RAG/cache components as in ``test_inference_api``; fixed seed, bounded
example counts.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from atalaia.models.generator import ChatResult, ChatStream
from atalaia.settings import Settings
from inference.app import create_app
from inference.cache import ResponseCache
from inference.models import ModelManager, ServedModel
from producers.sdk import EventProducer
from tests.unit.test_inference_api import FakeGenerator, FakeQueryEmbedder, FakeRetriever

TOKEN = "adm-9f2c41e7d05b"

PROFILE = settings(
    max_examples=60,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=16,
)
odd_text = (
    st.text(max_size=30)
    | st.sampled_from(["", " ", "\x00", "\ud800", "\u2028", "\U0001f600" * 3, "%s%n", "{{}}", "</s>", "<|im_end|>"])
    | st.text(min_size=300, max_size=600)
)


class RoomyGenerator(FakeGenerator):
    """A fake model with a long context, so most requests reach generation."""

    context_length = 4096

    def chat_stream(self, messages, max_tokens=128, temperature=0.0, top_p=1.0, stop=None) -> ChatStream:  # type: ignore[no-untyped-def]
        prompt = self._check(messages, max_tokens)
        stream = ChatStream(iter(()))

        def pieces() -> Iterator[str]:
            yield from ("Thirty", " days.")
            stream.result = ChatResult("Thirty days.", prompt, 3, "stop")

        stream._pieces = pieces()
        return stream


@pytest.fixture(scope="module")
def clients(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two services: plain, and with RAG, the response cache and PII redaction on."""
    out: dict[str, Any] = {}
    for name, extra in (
        ("plain", {}),
        ("full", {"redact_pii": True, "rag_top_k": 2}),
    ):
        home = tmp_path_factory.mktemp(name)
        s = Settings(home=home, max_new_tokens_limit=64, admin_token=TOKEN, kafka_bootstrap="127.0.0.1:1", **extra)
        producer = EventProducer(s, start=False)  # serialises every event, sends nothing
        (home / "v2").mkdir()
        models = ModelManager(ServedModel(s.model_version, RoomyGenerator()), loader=lambda path: RoomyGenerator())
        kwargs: dict[str, Any] = {"models": models}
        if name == "full":
            kwargs |= {
                "retriever": FakeRetriever(),
                "cache": ResponseCache(semantic_threshold=0.95),
                "embedder": FakeQueryEmbedder(),
            }
        app = create_app(s, models.active.generator, producer, **kwargs)
        out[name] = (TestClient(app, raise_server_exceptions=False), producer, s)
    return out


def _assert_ok_or_4xx(r: Any) -> None:
    assert r.status_code < 500, (r.status_code, r.text[:500])
    if r.status_code >= 400:
        error = r.json()["error"]
        assert isinstance(error["message"], str) and error["message"] and error["type"]


def _post(client: TestClient, path: str, body: Any, headers: dict[str, str] | None = None) -> Any:
    if isinstance(body, bytes):
        return client.post(path, content=body, headers={"content-type": "application/json", **(headers or {})})
    # ensure_ascii keeps lone surrogates as escapes: valid JSON text that decodes to them.
    return client.post(
        path, content=json.dumps(body).encode(), headers={"content-type": "application/json", **(headers or {})}
    )


message = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant", "developer"]) | json_values, "content": odd_text},
    optional={"name": odd_text, "tool_calls": json_values},
)
# Each field's adversarial values; a body is a valid request with a few of them swapped in, so
# most examples get past validation into generation, the cache, redaction and the event.
VALID_MODELS = st.sampled_from(["smollm2-135m-instruct", "smollm2-135m-instruct@base"])
CHAT_FIELDS: dict[str, Any] = {
    "model": VALID_MODELS | VALID_MODELS | odd_text | json_values,
    "messages": st.lists(message, min_size=1, max_size=4) | st.lists(message, max_size=4) | json_values,
    "max_tokens": st.integers(min_value=-5, max_value=100) | st.integers(min_value=1, max_value=64) | json_values,
    "max_completion_tokens": st.integers(min_value=-5, max_value=100),
    "temperature": st.floats(min_value=-1, max_value=3) | st.sampled_from([0, 0.0, 2]) | json_values,
    "top_p": st.floats(min_value=-1, max_value=2),
    "stream": st.booleans() | st.booleans() | json_values,
    "stop": st.lists(odd_text, max_size=3) | odd_text | json_values,
    "user": odd_text | odd_text | json_values,
    "metadata": st.dictionaries(odd_text, odd_text | json_values, max_size=3) | json_values,
    "n": json_values,
    "tools": json_values,
}
chat_body = st.builds(
    lambda swaps, content: (
        {"model": "smollm2-135m-instruct@base", "messages": [{"role": "user", "content": content}]} | swaps
    ),
    st.dictionaries(st.sampled_from(sorted(CHAT_FIELDS)), st.none(), max_size=3).flatmap(
        lambda keys: st.fixed_dictionaries({k: CHAT_FIELDS[k] for k in keys})
    ),
    odd_text,
)


def _chat(content: str = "hi", **extra: Any) -> dict[str, Any]:
    return {"model": "smollm2-135m-instruct@base", "messages": [{"role": "user", "content": content}]} | extra


@PROFILE
@given(body=chat_body, which=st.sampled_from(["plain", "full"]))
# Always tried, whatever the seed: strings that parse as JSON but are not storable text, and a
# `user` longer than an event's request_id may be.
@example(body=_chat("a\ud800b"), which="plain")
@example(body=_chat("hi", user="\udfff"), which="full")
@example(body=_chat("hi", metadata={"k": "\ud83d"}), which="full")
@example(body=_chat("a\x00b"), which="plain")
@example(body=_chat("hi", stop=["\x00"], metadata={"\x00": 1}), which="full")
@example(body=_chat("hi", user="u" * 201), which="plain")
@example(body=_chat("a\ud800b", stream=True), which="plain")
def test_chat_completions_never_5xx(clients: dict[str, Any], body: dict[str, Any], which: str) -> None:
    client, producer, _ = clients[which]
    before = producer.stats.emitted
    if body.get("stream") is True:
        with client.stream("POST", "/v1/chat/completions", content=json.dumps(body).encode()) as r:
            text = "".join(r.iter_text())
            assert r.status_code < 500, (r.status_code, text[:500])
            if r.status_code == 200:
                assert text.rstrip().endswith("data: [DONE]")
                assert producer.stats.emitted == before + 1
            return
    r = _post(client, "/v1/chat/completions", body)
    _assert_ok_or_4xx(r)
    if r.status_code == 200:
        assert r.json()["choices"][0]["message"]["content"] == "Thirty days."
        assert producer.stats.emitted == before + 1
    else:
        assert producer.stats.emitted == before


@PROFILE
@given(raw=st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()))
def test_every_post_route_survives_random_bytes(clients: dict[str, Any], raw: bytes) -> None:
    client, _, _ = clients["full"]
    auth = {"authorization": f"Bearer {TOKEN}"}
    for path in ("/v1/chat/completions", "/v1/feedback", "/admin/deploy", "/admin/rollback", "/admin/cache/clear"):
        _assert_ok_or_4xx(_post(client, path, raw, auth))


def test_deep_nesting_and_huge_bodies(clients: dict[str, Any]) -> None:
    client, _, s = clients["full"]
    deep = b'{"model": "m", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    huge = {"model": s.model_version, "messages": [{"role": "user", "content": "word " * 400_000}]}
    # Under the body cap (ATALAIA_REQUEST_MAX_BYTES) but over the model's context.
    long = {"model": s.model_version, "messages": [{"role": "user", "content": "word " * 100_000}]}
    nested_meta = {
        "model": s.model_version,
        "messages": [{"role": "user", "content": "hi"}],
        "metadata": json.loads('{"a":' * 200 + "1" + "}" * 200),
    }
    for path in ("/v1/chat/completions", "/v1/feedback", "/admin/deploy"):
        _assert_ok_or_4xx(_post(client, path, deep, {"authorization": f"Bearer {TOKEN}"}))
    r = _post(client, "/v1/chat/completions", huge)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    r = _post(client, "/v1/chat/completions", long)
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    _assert_ok_or_4xx(_post(client, "/v1/chat/completions", nested_meta))


feedback_body = st.fixed_dictionaries(
    {"completion_id": st.just("chatcmpl-00000000-0000-0000-0000-000000000001") | odd_text},
    optional={
        "rating": st.integers(min_value=-3, max_value=3) | json_values,
        "corrected_answer": odd_text | json_values,
        "comment": odd_text | json_values,
        "metadata": st.dictionaries(odd_text, json_values) | json_values,
        "extra": json_values,
    },
)


@PROFILE
@given(body=feedback_body | json_values)
@example(body={"completion_id": "chatcmpl-00000000-0000-0000-0000-000000000001", "comment": "\ud800"})
@example(
    body={"completion_id": "chatcmpl-00000000-0000-0000-0000-000000000001", "rating": 1, "metadata": {"k": "\x00"}}
)
def test_feedback_never_5xx(clients: dict[str, Any], body: Any) -> None:
    client, producer, _ = clients["full"]
    before = producer.stats.emitted
    r = _post(client, "/v1/feedback", body)
    _assert_ok_or_4xx(r)
    assert r.status_code in (202, 400), r.text
    assert producer.stats.emitted == before + (r.status_code == 202)


admin_body = st.fixed_dictionaries(
    {},
    optional={
        "model_version": odd_text | json_values,
        "artefact_path": st.sampled_from(["v2", "/nonexistent", "/etc/passwd", "../../", ""]) | odd_text,
        "reason": odd_text | json_values,
    },
)
header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)


@PROFILE
@given(
    path=st.sampled_from(["/admin/deploy", "/admin/rollback", "/admin/cache/clear"]),
    body=admin_body | json_values,
    auth=st.none() | header_text | header_text.map("Bearer {}".format) | st.just(f"bearer  {TOKEN} "),
)
def test_admin_routes_refuse_anything_but_the_token(clients: dict[str, Any], path: str, body: Any, auth: Any) -> None:
    client, _, s = clients["plain"]
    headers = {} if auth is None else {"authorization": auth}
    if isinstance(body, dict) and body.get("artefact_path") == "v2":
        body["artefact_path"] = str(s.home / "v2")
    r = _post(client, path, body, headers)
    _assert_ok_or_4xx(r)
    supplied = auth[7:].strip() if isinstance(auth, str) and auth[:7].lower() == "bearer " else None
    if supplied != TOKEN:
        assert r.status_code in (400, 401), r.text  # 400: the body was refused before the token was read
        assert TOKEN not in r.text
    client.post("/admin/rollback", json={}, headers={"authorization": f"Bearer {TOKEN}"})  # back to base


@PROFILE
@given(
    path=st.sampled_from(["/healthz", "/metrics", "/v1/models"]),
    query=st.dictionaries(header_text, header_text, max_size=3),
    accept=header_text,
)
def test_get_routes_always_answer(clients: dict[str, Any], path: str, query: dict[str, str], accept: str) -> None:
    client, _, _ = clients["full"]
    r = client.get(path, params=query, headers={"accept": accept})
    assert r.status_code == 200, r.text


@PROFILE
@given(path=header_text.map(lambda p: "/" + p.lstrip("/")), method=st.sampled_from(["GET", "POST", "PUT", "DELETE"]))
def test_unknown_routes_and_methods_are_4xx(clients: dict[str, Any], path: str, method: str) -> None:
    client, _, _ = clients["plain"]
    r = client.request(method, path)
    assert r.status_code < 500, (path, r.status_code, r.text)


def test_producer_of_the_fixture_never_sent(clients: dict[str, Any]) -> None:
    for client, producer, _ in clients.values():
        assert producer.stats.sent == 0 and isinstance(producer.spool.path, Path)
        client.close()
