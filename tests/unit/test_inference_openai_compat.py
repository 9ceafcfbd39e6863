"""OpenAI request shapes the inference service must accept or refuse clearly: tool turns in a
multi-turn conversation, and fields it cannot honour (``n`` > 1, JSON output, forced tool calls);
and the version-2 fields of the events it builds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
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


def test_the_openai_client_can_continue_a_tool_conversation(served) -> None:  # type: ignore[no-untyped-def]
    client, producer, settings, generator = served
    api = openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=client)
    reply = api.chat.completions.create(model=settings.model_version, messages=TOOL_TURNS, max_tokens=4)  # type: ignore[arg-type]
    assert reply.choices[0].message.content == "Thirty days."
    # The model sees the call and its result as text in its chat template.
    assert generator.seen[-1] == [
        {"role": "user", "content": "How many vacation days?"},
        {"role": "assistant", "content": 'Tool call: vacation_days({"year": 2025})'},
        {"role": "tool", "content": "30"},
    ]
    # The event records them as the kernel's tool parts.
    (event,) = producer.events
    assert isinstance(event, InferenceEvent)
    _, call, result = event.messages
    (part,) = call.content
    assert (part.type, part.id, part.name, part.text) == ("tool_call", "call_1", "vacation_days", '{"year": 2025}')  # type: ignore[union-attr]
    (part,) = result.content
    assert (result.role, part.type, part.id, part.text) == ("tool", "tool_call_response", "call_1", "30")  # type: ignore[union-attr]
    InferenceEvent.model_validate_json(event.to_json())  # the event round-trips


def test_tool_turns_with_text_parts_and_the_old_function_call(served) -> None:  # type: ignore[no-untyped-def]
    client, producer, settings, generator = served
    messages = [
        {"role": "user", "content": "Days?"},
        {"role": "assistant", "content": "Let me check.", "function_call": {"name": "days", "arguments": "{}"}},
        {"role": "tool", "tool_call_id": "c", "content": [{"type": "text", "text": "30"}]},
    ]
    r = client.post("/v1/chat/completions", json=_body(settings, messages=messages))
    assert r.status_code == 200, r.text
    assert generator.seen[-1][1]["content"] == "Let me check.\nTool call: days({})"
    assert generator.seen[-1][2]["content"] == "30"
    call = producer.events[0].messages[1]  # type: ignore[attr-defined]
    assert [p.type for p in call.content] == ["text", "tool_call"] and call.text == "Let me check."


def test_different_tool_calls_are_not_one_cached_answer(tmp_path: Path) -> None:
    from inference.cache import ResponseCache

    settings = Settings(home=tmp_path, max_new_tokens_limit=32)
    producer = RecordingProducer()
    client = TestClient(create_app(settings, FakeGenerator(), producer, cache=ResponseCache(semantic_threshold=None)))
    other = {**CALL, "function": {"name": "sick_days", "arguments": "{}"}}
    for call in (CALL, other):
        turns = [TOOL_TURNS[0], {"role": "assistant", "content": None, "tool_calls": [call]}, TOOL_TURNS[2]]
        r = client.post("/v1/chat/completions", json=_body(settings, messages=turns))
        assert r.status_code == 200 and "x-atalaia-cache" not in r.headers


@pytest.mark.parametrize(
    ("message", "needle"),
    [
        ({"role": "user", "content": None}, "content is required"),
        ({"role": "assistant", "content": None}, "content is required"),
        ({"role": "tool", "content": "30"}, "tool_call_id"),
    ],
)
def test_malformed_tool_turns_are_400(served, message: dict[str, Any], needle: str) -> None:  # type: ignore[no-untyped-def]
    client, producer, settings, _ = served
    r = client.post("/v1/chat/completions", json=_body(settings, messages=[TOOL_TURNS[0], message]))
    assert r.status_code == 400 and needle in r.json()["error"]["message"], r.text
    assert not producer.events


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"n": 2}, "n"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tool_choice": {"type": "function", "function": {"name": "days"}}}, "tool_choice"),
        ({"logprobs": True}, "logprobs"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"frequency_penalty": 0.5}, "frequency_penalty"),
        ({"presence_penalty": -0.3}, "presence_penalty"),
        ({"logit_bias": {"1234": -100}}, "logit_bias"),
        ({"seed": 1, "temperature": 0.8}, "seed"),
    ],
)
def test_what_cannot_be_honoured_is_refused_not_ignored(served, extra: dict[str, Any], param: str) -> None:  # type: ignore[no-untyped-def]
    client, producer, settings, _ = served
    for stream in (False, True):
        r = client.post("/v1/chat/completions", json=_body(settings, stream=stream, **extra))
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["param"] == param and error["code"] == "unsupported_value"
        assert error["type"] == "invalid_request_error" and "not supported" in error["message"]
    assert not producer.events


@pytest.mark.parametrize(
    "extra",
    [
        {"n": 1},
        {"response_format": {"type": "text"}},
        {"tool_choice": "auto"},
        {"tool_choice": "none"},
        # The neutral values many clients send by default change nothing; a seed of a greedy answer neither.
        {"logprobs": False, "frequency_penalty": 0, "presence_penalty": 0.0, "logit_bias": {}},
        {"seed": 7, "temperature": 0},
    ],
)
def test_what_it_can_honour_is_answered(served, extra: dict[str, Any]) -> None:  # type: ignore[no-untyped-def]
    client, producer, settings, _ = served
    tools = [{"type": "function", "function": {"name": "days", "parameters": {"type": "object"}}}]
    r = client.post("/v1/chat/completions", json=_body(settings, tools=tools, **extra))
    assert r.status_code == 200, r.text
    assert len(r.json()["choices"]) == 1 and len(producer.events) == 1


def test_the_openai_client_sees_n_refused(served) -> None:  # type: ignore[no-untyped-def]
    client, _, settings, _ = served
    api = openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=client, max_retries=0)
    with pytest.raises(openai.BadRequestError, match="n > 1 is not supported"):
        api.chat.completions.create(model=settings.model_version, messages=[{"role": "user", "content": "hi"}], n=2)
