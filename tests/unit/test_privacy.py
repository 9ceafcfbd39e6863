"""Subject ids from the request's `user`, the pepper, and the retention plan (no database)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from atalaia.events import FeedbackEvent, InferenceEvent
from atalaia.privacy import resolve_subject, retention_plan
from atalaia.settings import ConfigError, Settings, load_settings
from atalaia.subjects import PEPPER_FILE, subject_id, subject_pepper
from inference.app import create_app
from tests.unit.test_inference_api import FakeGenerator, RecordingProducer


def test_generated_pepper_is_private_and_stable(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    first = subject_pepper(settings)
    path = tmp_path / PEPPER_FILE
    assert len(first) == 64 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert subject_pepper(Settings(home=tmp_path)) == first
    # A configured pepper wins, and is never shown.
    configured = Settings(home=tmp_path, subject_pepper="s3cret")
    assert subject_pepper(configured) == b"s3cret" and "s3cret" not in repr(configured)


def test_inference_stores_a_keyed_hash_of_the_user_not_the_user(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, subject_pepper="pepper", max_new_tokens_limit=32)
    producer = RecordingProducer()
    client = TestClient(create_app(settings, FakeGenerator(), producer))
    body = {"model": settings.model_version, "messages": [{"role": "user", "content": "Hi?"}], "user": "ana@x.io"}
    assert client.post("/v1/chat/completions", json=body).status_code == 200
    (event,) = producer.events
    assert isinstance(event, InferenceEvent)
    assert event.subject_id == subject_id("ana@x.io", b"pepper") and event.request_id is None
    assert "ana@x.io" not in event.to_json().decode()
    assert event.caller is None or event.caller != event.subject_id  # the API caller is another thing
    r = client.post(
        "/v1/feedback", json={"completion_id": f"chatcmpl-{event.event_id}", "rating": 1, "user": "ana@x.io"}
    )
    assert r.status_code == 202
    feedback = producer.events[-1]
    assert isinstance(feedback, FeedbackEvent) and feedback.subject_id == event.subject_id
    # Without a user, no subject.
    client.post("/v1/chat/completions", json={k: v for k, v in body.items() if k != "user"})
    assert producer.events[-1].subject_id is None


def test_resolve_subject(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, subject_pepper="k")
    assert resolve_subject(settings, "ana") == subject_id("ana", b"k")
    assert resolve_subject(settings, subject_hash="ABC") == "abc"
    with pytest.raises(ValueError, match="--subject"):
        resolve_subject(settings)


def test_retention_settings(tmp_path: Path) -> None:
    assert retention_plan(Settings(home=tmp_path)) == dict.fromkeys(
        ("inference_events", "metrics", "embeddings", "feedback"), 90
    )
    plan = retention_plan(Settings(home=tmp_path, retention_days=0, retention_table_days={"metric_windows": 400}))
    assert plan == {"metric_windows": 400}
    with pytest.raises(ConfigError, match="ATALAIA_RETENTION_TABLE_DAYS"):
        load_settings(home=tmp_path, retention_table_days={"users": 3})
    with pytest.raises(ConfigError, match="ATALAIA_TEXT_LANGUAGE"):
        load_settings(home=tmp_path, text_language="portuguese")
