"""The gateway with the official `openai` and `anthropic` clients: Atalaia's inference app (on a
fake generator) as the OpenAI-compatible upstream, a local Messages-format server as Anthropic."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from atalaia.events import InferenceEvent, parse_event
from atalaia.settings import Settings
from gateway.app import create_app
from gateway.calls import EventBuilder
from inference.app import create_app as create_inference
from tests.conftest import free_port
from tests.helpers_anthropic import API_KEY, running
from tests.helpers_anthropic import create_app as create_anthropic
from tests.unit.test_inference_api import FakeGenerator, RecordingProducer


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[dict[str, Any]]:
    oa_port, an_port, gw_port = free_port(), free_port(), free_port()
    serve_settings = Settings(home=tmp_path, rag_enabled=False, cache_enabled=False)
    fake_anthropic = create_anthropic()
    events: list[InferenceEvent] = []
    settings = Settings(
        home=tmp_path,
        gateway_upstreams={
            "local": {
                "base_url": f"http://127.0.0.1:{oa_port}/v1",
                "protocol": "openai",
                "provider": "atalaia",
                "prices": {serve_settings.model_version: [0.001, 0.002]},
            },
            "claude": {"base_url": f"http://127.0.0.1:{an_port}", "protocol": "anthropic"},
            "down": {"base_url": f"http://127.0.0.1:{free_port()}", "protocol": "openai"},
        },
    )
    with (
        running(create_inference(serve_settings, FakeGenerator(), RecordingProducer()), oa_port),
        running(fake_anthropic, an_port),
        running(create_app(settings, _events_into(settings, events)), gw_port),
    ):
        yield {
            "gateway": f"http://127.0.0.1:{gw_port}",
            "events": events,
            "seen": fake_anthropic.state.seen,
            "model": serve_settings.model_version,
        }


def _events_into(settings: Settings, events: list[InferenceEvent]) -> Any:
    build = EventBuilder(settings)

    def hand_off(call: Any) -> None:
        event = build(call)
        assert event is not None
        events.append(event)

    return hand_off


def _wait(events: list[InferenceEvent], n: int) -> None:
    deadline = time.monotonic() + 5
    while len(events) < n and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(events) == n, events


def test_openai_client_through_the_gateway(stack: dict[str, Any]) -> None:
    client = openai.OpenAI(base_url=stack["gateway"] + "/local", api_key="sk-caller-secret")
    answer = client.chat.completions.create(
        model=stack["model"], max_tokens=8, messages=[{"role": "user", "content": "How many vacation days?"}]
    )
    _wait(stack["events"], 1)
    ev = parse_event(stack["events"][0].to_json())
    assert ev.response == answer.choices[0].message.content and ev.provider == "atalaia"
    assert ev.model_version == stack["model"] and ev.service == "local"
    assert (ev.prompt_tokens, ev.completion_tokens) == (answer.usage.prompt_tokens, answer.usage.completion_tokens)
    assert ev.cost == pytest.approx((ev.prompt_tokens * 0.001 + ev.completion_tokens * 0.002) / 1000)
    assert ev.finish_reason == answer.choices[0].finish_reason and ev.request_id == answer.id
    assert ev.messages[0].content == "How many vacation days?" and ev.latency_ms > 0
    assert "sk-caller-secret" not in ev.to_json().decode()

    # A stream: the caller sees exactly what it asked for (no usage chunk), the event has usage and TTFT.
    chunks = list(
        client.chat.completions.create(
            model=stack["model"],
            max_tokens=8,
            stream=True,
            messages=[{"role": "user", "content": "Who approves travel?"}],
        )
    )
    assert all(c.choices for c in chunks)
    _wait(stack["events"], 2)
    ev = stack["events"][1]
    assert ev.response == "".join(c.choices[0].delta.content or "" for c in chunks)
    assert ev.completion_tokens > 0 and ev.time_to_first_token_ms is not None
    assert 0 <= ev.time_to_first_token_ms <= ev.latency_ms and ev.metadata["stream"] is True

    # A caller that asked for usage gets it.
    chunks = list(
        client.chat.completions.create(
            model=stack["model"],
            max_tokens=4,
            stream=True,
            stream_options={"include_usage": True},
            messages=[{"role": "user", "content": "Hi"}],
        )
    )
    _wait(stack["events"], 3)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == stack["events"][2].completion_tokens


def test_anthropic_client_through_the_gateway(stack: dict[str, Any]) -> None:
    client = anthropic.Anthropic(base_url=stack["gateway"] + "/claude", api_key=API_KEY)
    message = client.messages.create(
        model="claude-sonnet-4-5-20250929",
        max_tokens=50,
        system="You answer HR questions.",
        messages=[{"role": "user", "content": "How many vacation days?"}],
    )
    _wait(stack["events"], 1)
    ev = parse_event(stack["events"][0].to_json())
    assert ev.response == message.content[0].text == "You said: How many vacation days?"
    assert ev.provider == "anthropic" and ev.model_version == "claude-sonnet-4-5-20250929"
    assert (ev.prompt_tokens, ev.completion_tokens) == (message.usage.input_tokens, message.usage.output_tokens)
    assert ev.cost == pytest.approx((ev.prompt_tokens * 0.003 + ev.completion_tokens * 0.015) / 1000)  # shipped price
    assert [m.role for m in ev.messages] == ["system", "user"] and ev.finish_reason == "end_turn"
    # The caller's credentials arrived untouched, and nothing of them is in the event.
    sent = stack["seen"][-1]
    assert API_KEY in (sent.get("x-api-key"), sent.get("authorization", "").removeprefix("Bearer "))
    assert API_KEY not in ev.to_json().decode()

    with client.messages.stream(
        model="claude-haiku-4-5",
        max_tokens=3,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "AAEC"}},
                ],
            }
        ],
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    _wait(stack["events"], 2)
    ev = stack["events"][1]
    assert ev.response == text == "You said: What"
    assert ev.finish_reason == "max_tokens" == final.stop_reason
    assert ev.completion_tokens == 3 and ev.prompt_tokens == final.usage.input_tokens
    assert ev.time_to_first_token_ms is not None
    part = ev.messages[0].content[1]
    assert (part.type, part.mime_type, part.size_bytes, part.data) == ("image", "image/jpeg", 3, None)


def test_upstream_errors_pass_through_and_are_counted(stack: dict[str, Any]) -> None:
    bad = anthropic.Anthropic(base_url=stack["gateway"] + "/claude", api_key="wrong-key", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as info:
        bad.messages.create(model="claude-haiku-4-5", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == 401 and info.value.body["error"]["type"] == "authentication_error"
    good = anthropic.Anthropic(base_url=stack["gateway"] + "/claude", api_key=API_KEY, max_retries=0)
    with pytest.raises(anthropic.NotFoundError):
        good.messages.create(model="claude-missing", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    down = openai.OpenAI(base_url=stack["gateway"] + "/down", api_key="x", max_retries=0)
    with pytest.raises(openai.APIStatusError) as oinfo:
        down.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    assert oinfo.value.status_code == 502
    assert httpx.post(stack["gateway"] + "/nowhere/v1/messages", json={}).status_code == 404
    metrics = httpx.get(stack["gateway"] + "/metrics").text
    assert 'atalaia_gateway_upstream_errors_total{status="401",upstream="claude"} 1.0' in metrics
    assert 'atalaia_gateway_upstream_errors_total{status="404",upstream="claude"} 1.0' in metrics
    assert 'atalaia_gateway_upstream_errors_total{status="502",upstream="down"} 1.0' in metrics
    time.sleep(0.2)
    assert stack["events"] == []  # no answer, no inference event


def test_bad_upstream_config_names_the_variable(tmp_path: Path) -> None:
    from atalaia.settings import ConfigError, load_settings

    with pytest.raises(ConfigError, match="ATALAIA_GATEWAY_UPSTREAMS"):
        load_settings(home=tmp_path, gateway_upstreams={"x": {"base_url": "ftp://nope"}})
    with pytest.raises(ConfigError, match="protocol"):
        load_settings(home=tmp_path, gateway_upstreams={"x": {"base_url": "http://a", "protocol": "grpc"}})
