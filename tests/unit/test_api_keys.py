"""API keys on the inference routes: hashed at rest, several at once, rotation without restart,
401/403 with a clear message, per-key rate limits with 429 and Retry-After, caller on events."""

from __future__ import annotations

import json
import os
from pathlib import Path

from fastapi.testclient import TestClient

from atalaia.events import FeedbackEvent, InferenceEvent
from atalaia.settings import Settings
from inference.app import create_app
from inference.auth import hash_key
from tests.unit.test_inference_api import FakeGenerator, RecordingProducer


def _app(tmp_path: Path, **settings: object) -> tuple[TestClient, RecordingProducer, Settings]:
    s = Settings(home=tmp_path, rag_enabled=False, cache_enabled=False, **settings)  # type: ignore[arg-type]
    producer = RecordingProducer()
    return TestClient(create_app(s, FakeGenerator(), producer)), producer, s


def _chat(client: TestClient, settings: Settings, key: str | None = None) -> object:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    body = {"model": settings.model_version, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    return client.post("/v1/chat/completions", json=body, headers=headers)


def test_without_keys_routes_stay_open(tmp_path: Path) -> None:
    client, producer, settings = _app(tmp_path)
    r = _chat(client, settings)
    assert r.status_code == 200
    (event,) = [e for e in producer.events if isinstance(e, InferenceEvent)]
    assert event.caller is None


def test_anonymous_and_unknown_keys_are_refused_and_the_key_names_the_caller(tmp_path: Path) -> None:
    client, producer, settings = _app(
        tmp_path, api_keys={"billing": hash_key("k-billing"), "support": f"{hash_key('k-old')},{hash_key('k-new')}"}
    )
    anonymous = _chat(client, settings)
    assert anonymous.status_code == 401
    assert "Authorization: Bearer" in anonymous.json()["error"]["message"]
    wrong = _chat(client, settings, "k-guess")
    assert wrong.status_code == 403 and wrong.json()["error"]["code"] == "invalid_api_key"
    assert not producer.events  # refused requests emit nothing

    assert _chat(client, settings, "k-billing").status_code == 200
    assert _chat(client, settings, "k-new").status_code == 200
    assert _chat(client, settings, "k-old").status_code == 200  # several keys at once (rotation)
    completion = _chat(client, settings, "k-new").json()["id"]
    fb = client.post(
        "/v1/feedback",
        json={"completion_id": completion, "rating": -1, "corrected_answer": "x"},
        headers={"Authorization": "Bearer k-new"},
    )
    assert fb.status_code == 202
    callers = [e.caller for e in producer.events]
    assert callers == ["billing", "support", "support", "support", "support"]
    assert isinstance(producer.events[-1], FeedbackEvent)
    assert client.post("/v1/feedback", json={"completion_id": completion, "rating": 1}).status_code == 401
    assert client.get("/healthz").status_code == 200  # health and metrics stay open


def test_key_file_rotates_without_restart(tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"svc": hash_key("first")}))
    client, _, settings = _app(tmp_path, api_keys_file=keys)
    assert _chat(client, settings, "first").status_code == 200
    keys.write_text(json.dumps({"svc": hash_key("second")}))
    os.utime(keys, (1, 1))  # a different mtime even within the same clock tick
    assert _chat(client, settings, "second").status_code == 200
    assert _chat(client, settings, "first").status_code == 403


def test_rate_limit_per_key_gives_429_with_retry_after(tmp_path: Path) -> None:
    client, _, settings = _app(
        tmp_path, api_keys={"a": hash_key("ka"), "b": hash_key("kb")}, api_key_rate_per_s=0.01, api_key_burst=2
    )
    assert [_chat(client, settings, "ka").status_code for _ in range(2)] == [200, 200]
    limited = _chat(client, settings, "ka")
    assert limited.status_code == 429
    assert int(limited.headers["Retry-After"]) >= 1
    assert "'a'" in limited.json()["error"]["message"]
    assert _chat(client, settings, "kb").status_code == 200  # another caller has its own bucket


def test_plain_keys_are_refused_in_settings(tmp_path: Path) -> None:
    import pytest

    from atalaia.settings import ConfigError, load_settings

    with pytest.raises(ConfigError, match="ATALAIA_API_KEYS"):
        load_settings(home=tmp_path, api_keys={"svc": "not-a-hash"})
