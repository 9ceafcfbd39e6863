"""OpenAI request shapes the inference service must accept or refuse clearly: tool turns in a
multi-turn conversation, and fields it cannot honour (``n`` > 1, JSON output, forced tool calls);
and the version-2 fields of the events it builds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from atalaia.events import InferenceEvent
from atalaia.models.generator import ChatResult, ChatStream
from atalaia.settings import Settings
from inference.app import create_app
from tests.unit.test_inference_api import FakeGenerator, RecordingProducer, _body

CALL = {"id": "call_1", "type": "function", "function": {"name": "vacation_days", "arguments": '{"year": 2025}'}}
TOOL_TURNS: list[dict[str, Any]] = [
    {"role": "user", "content": "How many vacation days?"},
    {"role": "assistant", "content": None, "tool_calls": [CALL]},
    {"role": "tool", "tool_call_id": "call_1", "content": "30"},
]


class RecordingGenerator(FakeGenerator):
    """The fake generator, keeping the messages the model was given."""

    def __init__(self) -> None:
        self.seen: list[list[dict[str, str]]] = []

    def chat(self, messages, max_tokens=128, temperature=0.0, top_p=1.0, stop=None) -> ChatResult:  # type: ignore[no-untyped-def]
        self.seen.append(messages)
        return super().chat(messages, max_tokens, temperature, top_p, stop)

    def chat_stream(self, messages, max_tokens=128, temperature=0.0, top_p=1.0, stop=None) -> ChatStream:  # type: ignore[no-untyped-def]
        self.seen.append(messages)
        return super().chat_stream(messages, max_tokens, temperature, top_p, stop)


@pytest.fixture
def served(tmp_path: Path) -> tuple[TestClient, RecordingProducer, Settings, RecordingGenerator]:
    settings = Settings(home=tmp_path, max_new_tokens_limit=32)
    producer, generator = RecordingProducer(), RecordingGenerator()
    return TestClient(create_app(settings, generator, producer)), producer, settings, generator


def test_events_fill_the_top_level_finish_reason(served) -> None:  # type: ignore[no-untyped-def]
    client, producer, settings, _ = served
    assert client.post("/v1/chat/completions", json=_body(settings, max_tokens=8)).status_code == 200
    with client.stream("POST", "/v1/chat/completions", json=_body(settings, max_tokens=9, stream=True)) as r:
        assert r.status_code == 200 and list(r.iter_lines())
    plain, streamed = producer.events
    for event in (plain, streamed):
        assert isinstance(event, InferenceEvent)
        # The version-2 field, and the metadata copy older readers know.
        assert event.finish_reason == "stop" == event.metadata["finish_reason"]
        assert event.provider == "atalaia" and event.time_to_first_token_ms is None  # the fake does not time
