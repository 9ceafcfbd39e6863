"""The gateway on what goes wrong: errors inside a 200 stream, streams cut off by the caller or
the upstream, tool calls, long caller-supplied names, headers that must not repeat.

The upstream is a scripted server: the request's ``model`` picks what it answers.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from atalaia.events import MAX_INT32, InferenceEvent, parse_event
from atalaia.settings import Settings
from gateway import protocols as p
from gateway.app import create_app
from gateway.calls import EventBuilder, FinishedCall
from tests.conftest import free_port
from tests.helpers_anthropic import running


def _sse(data: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data)}\n\n".encode()


def _oai(delta: dict[str, Any], finish: str | None = None) -> bytes:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return _sse({"id": "c1", "model": "m", "object": "chat.completion.chunk", "choices": [choice]})


_USAGE = _sse({"id": "c1", "model": "m", "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2}})
_START = _sse(
    {"type": "message_start", "message": {"id": "msg_1", "model": "claude-x", "usage": {"input_tokens": 7}}},
    "message_start",
)

OPENAI_SCRIPTS: dict[str, list[bytes]] = {
    "midstream-error": [
        _oai({"role": "assistant", "content": "Hel"}),
        _sse({"error": {"message": "The server had an error", "type": "server_error"}}),
    ],
    "cut": [_oai({"content": "Hel"}), _oai({"content": "lo"})],  # no finish reason, no [DONE]
    "done-without-blank-line": [_oai({"content": "Hi"}), _USAGE, b"data: [DONE]"],
    "tools": [
        _oai({"role": "assistant", "tool_calls": [{"index": 0, "id": "call_1", "function": {"name": "get_weather"}}]}),
        _oai({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": "Porto"}'}}]}),
        _oai({}, "tool_calls"),
        _USAGE,
        b"data: [DONE]\n\n",
    ],
    "slow": [_oai({"content": f"w{i} "}) for i in range(40)] + [_oai({}, "stop"), b"data: [DONE]\n\n"],
    # A whole stream, then the upstream keeps its connection open a while before closing it.
    "linger": [_oai({"content": "Hi"}, "stop"), _USAGE, b"data: [DONE]\n\n"],
}
ANTHROPIC_SCRIPTS: dict[str, list[bytes]] = {
    "midstream-error": [
        _START,
        _sse({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        _sse({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hel"}}),
        _sse({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}, "error"),
    ],
    "tools": [
        _START,
        _sse(
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}},
            }
        ),
        _sse({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": "{}"}}),
        _sse({"type": "content_block_stop", "index": 0}),
        _sse({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 9}}),
        _sse({"type": "message_stop"}, "message_stop"),
    ],
}


def _upstream() -> Starlette:
    async def answer(request: Request) -> Response:
        raw = await request.body()
        if request.headers.get("content-encoding") == "gzip":
            raw = gzip.decompress(raw)
        body = json.loads(raw)
        scripts = ANTHROPIC_SCRIPTS if request.url.path.endswith("messages") else OPENAI_SCRIPTS
        script = scripts.get(body["model"])
        if script is None or not body.get("stream"):
            return JSONResponse({"error": {"message": "unscripted", "type": "invalid_request_error"}}, 400)

        async def gen() -> AsyncIterator[bytes]:
            for piece in script:
                yield piece
                await asyncio.sleep(0.05 if body["model"] == "slow" else 0)
            if body["model"] == "linger":
                await asyncio.sleep(0.5)

        return StreamingResponse(gen(), media_type="text/event-stream")

    async def cookies(_: Request) -> Response:
        response = Response(b"{}", media_type="application/json")
        response.raw_headers += [(b"set-cookie", b"a=1"), (b"set-cookie", b"b=2")]
        return response

    return Starlette(
        routes=[
            Route("/v1/chat/completions", answer, methods=["POST"]),
            Route("/v1/messages", answer, methods=["POST"]),
            Route("/v1/cookies", cookies),
        ]
    )


def _settings(tmp_path: Path, port: int) -> Settings:
    return Settings(
        home=tmp_path,
        gateway_upstreams={
            "oai": {"base_url": f"http://127.0.0.1:{port}/v1", "protocol": "openai"},
            "claude": {"base_url": f"http://127.0.0.1:{port}", "protocol": "anthropic"},
        },
    )


@pytest.fixture
def gw(tmp_path: Path) -> Iterator[dict[str, Any]]:
    up_port, gw_port = free_port(), free_port()
    settings = _settings(tmp_path, up_port)
    build, events = EventBuilder(settings), []

    def hand_off(call: FinishedCall) -> None:
        event = build(call)
        assert event is not None
        events.append(parse_event(event.to_json()))  # what the worker would read

    with running(_upstream(), up_port), running(create_app(settings, hand_off), gw_port):
        yield {"url": f"http://127.0.0.1:{gw_port}", "events": events}


def _one(events: list[InferenceEvent]) -> InferenceEvent:
    deadline = time.monotonic() + 5
    while not events and time.monotonic() < deadline:
        time.sleep(0.01)
    (event,) = events
    return event


def _stream(url: str, model: str, **extra: Any) -> bytes:
    path = "/claude/v1/messages" if "/claude" in url else "/oai/chat/completions"
    body = {"model": model, "stream": True, "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}], **extra}
    return httpx.post(url.split("/claude")[0] + path, json=body, timeout=10).content


# -- 1: errors inside a 200 stream ---------------------------------------------------------------
@pytest.mark.parametrize("upstream", ["claude", "oai"])
def test_an_error_inside_a_stream_is_recorded_and_counted(gw: dict[str, Any], upstream: str) -> None:
    base = gw["url"] + ("/claude" if upstream == "claude" else "")
    raw = _stream(base, "midstream-error")
    assert b"error" in raw  # the caller sees the error as the upstream sent it
    event = _one(gw["events"])
    assert event.finish_reason == "error"
    assert event.metadata["error_type"] == ("overloaded_error" if upstream == "claude" else "server_error")
    assert event.metadata["error"] and "incomplete" not in event.metadata
    metrics = httpx.get(gw["url"] + "/metrics").text
    assert f'atalaia_gateway_upstream_errors_total{{status="stream_error",upstream="{upstream}"}} 1.0' in metrics


def test_an_error_answered_with_200_is_recorded() -> None:
    settings = Settings(gateway_upstreams={"oai": {"base_url": "http://x", "protocol": "openai"}})
    body = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}'
    record = p.request_record("openai", json.loads(body))
    answer = b'{"error": {"message": "upstream overloaded", "code": "overloaded"}}'
    event = EventBuilder(settings)(FinishedCall("oai", "app", 200, record, body, answer, 5.0, None))
    assert event is not None and event.finish_reason == "error" and event.metadata["error_type"] == "overloaded"


# -- 2: streams that end before their end --------------------------------------------------------
def test_a_caller_that_goes_away_leaves_an_event_marked_incomplete(gw: dict[str, Any]) -> None:
    body = {"model": "slow", "stream": True, "messages": [{"role": "user", "content": "a long story"}]}
    with (
        httpx.Client(timeout=10) as client,
        client.stream("POST", gw["url"] + "/oai/chat/completions", json=body) as response,
    ):
        next(response.iter_raw())
    event = _one(gw["events"])
    assert event.finish_reason == "incomplete" and event.metadata["incomplete"] == "caller_disconnected"
    assert event.response.startswith("w0") and len(event.response.split()) < 40
    metrics = httpx.get(gw["url"] + "/metrics").text
    assert "stream_incomplete" not in metrics  # the caller's doing, not the upstream's


def test_an_upstream_that_stops_early_leaves_an_event_marked_incomplete(gw: dict[str, Any]) -> None:
    assert _stream(gw["url"], "cut").count(b"data:") == 2
    event = _one(gw["events"])
    assert event.finish_reason == "incomplete" and event.response == "Hello"
    assert event.metadata["incomplete"] == "upstream closed the stream before its end"
    metrics = httpx.get(gw["url"] + "/metrics").text
    assert 'atalaia_gateway_upstream_errors_total{status="stream_incomplete",upstream="oai"} 1.0' in metrics


def test_a_caller_that_hangs_up_right_after_the_end_cut_nothing_short(gw: dict[str, Any]) -> None:
    # The openai client closes the response as soon as it reads [DONE]; the upstream's own end of
    # the stream may reach the gateway later. The call was answered in full: not "incomplete".
    body = {"model": "linger", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    with (
        httpx.Client(timeout=10) as client,
        client.stream("POST", gw["url"] + "/oai/chat/completions", json=body) as response,
    ):
        seen = b""
        for chunk in response.iter_raw():
            seen += chunk
            if b"[DONE]" in seen:
                break
    event = _one(gw["events"])
    assert event.finish_reason == "stop" and "incomplete" not in event.metadata
    assert event.response == "Hi" and (event.prompt_tokens, event.completion_tokens) == (5, 2)


def test_a_gzip_request_body_is_forwarded_and_read(gw: dict[str, Any]) -> None:
    body = {"model": "tools", "stream": True, "messages": [{"role": "user", "content": "Weather in Porto?"}]}
    for path in ("/claude/v1/messages", "/oai/chat/completions"):  # as sent / rewritten (include_usage)
        gw["events"].clear()
        raw = httpx.post(
            gw["url"] + path,
            content=gzip.compress(json.dumps(body).encode()),
            headers={"content-type": "application/json", "content-encoding": "gzip"},
            timeout=10,
        )
        assert raw.status_code == 200 and b"tool" in raw.content
        event = _one(gw["events"])
        assert event.messages[0].content == "Weather in Porto?" and event.metadata["tool_calls"]


def test_a_lone_surrogate_in_a_prompt_costs_the_event_nothing(gw: dict[str, Any]) -> None:
    # "\ud800" is valid JSON that no event can carry (not Unicode text): it becomes U+FFFD.
    body = json.dumps({"model": "tools", "stream": True, "messages": [{"role": "user", "content": "a\ud800b"}]})
    assert "\\ud800" in body
    raw = httpx.post(gw["url"] + "/oai/chat/completions", content=body, timeout=10)
    assert raw.status_code == 200
    assert _one(gw["events"]).messages[0].content == "a\ufffdb"


def test_a_last_done_without_its_blank_line_still_ends_the_stream(gw: dict[str, Any]) -> None:
    raw = _stream(gw["url"], "done-without-blank-line")
    assert raw.endswith(b"data: [DONE]") and b"usage" not in raw  # usage chunk still held back
    event = _one(gw["events"])
    assert event.finish_reason is None and "incomplete" not in event.metadata
    assert (event.prompt_tokens, event.completion_tokens) == (5, 2)


# -- 5: tool calls -------------------------------------------------------------------------------
def test_openai_tool_calls_are_kept_in_history_and_answers(gw: dict[str, Any]) -> None:
    history = [
        {"role": "user", "content": "Weather in Porto?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_0",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Porto"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_0", "content": "sunny"},
    ]
    _stream(gw["url"], "tools", messages=history)
    event = _one(gw["events"])
    assistant, tool = event.messages[1], event.messages[2]
    assert isinstance(assistant.content, list) and isinstance(tool.content, list)
    (call,) = assistant.content
    assert (call.type, getattr(call, "name", None), getattr(call, "id", None)) == ("tool_call", "get_weather", "call_0")
    assert call.text == '{"city": "Porto"}'  # arguments kept where redaction reaches, as serve and OTLP do
    (result,) = tool.content
    assert (result.type, result.text) == ("tool_call_response", "sunny")
    # The answer was a tool call: it is in the event, and its first piece was the first token.
    assert event.metadata["tool_calls"] == [{"type": "tool_call", "id": "call_1", "name": "get_weather"}]
    assert event.finish_reason == "tool_calls" and event.time_to_first_token_ms is not None


def test_a_whole_openai_tool_call_answer_is_kept() -> None:
    settings = Settings(gateway_upstreams={"oai": {"base_url": "http://x", "protocol": "openai"}})
    history = [{"role": "assistant", "content": "Let me look.", "function_call": {"name": "f"}}]
    body = json.dumps({"model": "m", "messages": history}).encode()
    record = p.request_record("openai", json.loads(body))
    message = {"role": "assistant", "content": None, "tool_calls": [{"id": "c9", "function": {"name": "lookup"}}]}
    answer = json.dumps({"id": "x", "model": "m", "choices": [{"message": message, "finish_reason": "tool_calls"}]})
    event = EventBuilder(settings)(FinishedCall("oai", "app", 200, record, body, answer.encode(), 5.0, None))
    assert event is not None and event.metadata["tool_calls"] == [{"type": "tool_call", "id": "c9", "name": "lookup"}]
    parts = event.messages[0].content
    assert (
        isinstance(parts, list) and [q.type for q in parts] == ["text", "tool_call"] and parts[0].text == "Let me look."
    )


def test_anthropic_tool_use_answers_are_kept(gw: dict[str, Any]) -> None:
    _stream(gw["url"] + "/claude", "tools")
    event = _one(gw["events"])
    assert event.metadata["tool_calls"] == [{"type": "tool_call", "id": "toolu_1", "name": "get_weather"}]
    assert event.finish_reason == "tool_use" and event.time_to_first_token_ms is not None
    record = p.CallRecord(kind="anthropic")
    block = {"type": "tool_use", "id": "toolu_2", "name": "f", "input": {}}
    p.anthropic_response(record, {"id": "m", "model": "c", "content": [block], "stop_reason": "tool_use"})
    assert record.tool_call_parts() == [{"type": "tool_call", "id": "toolu_2", "name": "f"}]


# -- 3: caller-supplied strings ------------------------------------------------------------------
def test_long_caller_supplied_names_are_cut_not_fatal() -> None:
    settings = Settings(gateway_upstreams={"oai": {"base_url": "http://x", "protocol": "openai"}})
    body = json.dumps({"model": "m" * 300, "messages": [{"role": "r" * 100, "content": "hi"}]}).encode()
    record = p.request_record("openai", json.loads(body))
    usage = {"prompt_tokens": 10**12, "completion_tokens": float("inf")}
    answer = {"id": "i" * 300, "model": 12345, "choices": [{"message": {"content": "ok"}, "finish_reason": "f" * 99}]}
    data = json.dumps({**answer, "usage": usage}).encode()
    event = EventBuilder(settings)(FinishedCall("oai", "s" * 300, 200, record, body, data, 5.0, None))
    assert event is not None
    back = parse_event(event.to_json())
    assert isinstance(back, InferenceEvent)
    assert len(back.service) == 200 and back.model_version == "12345" and len(back.request_id or "") == 200
    assert back.finish_reason == "f" * 64 and len(back.metadata["request_model"]) == 200
    assert (back.prompt_tokens, back.completion_tokens) == (MAX_INT32, MAX_INT32)
    blank = EventBuilder(settings)(FinishedCall("oai", "  ", 200, record, body, data, 5.0, None))
    assert blank is not None and blank.service == "oai"


# -- 4: headers ----------------------------------------------------------------------------------
def test_served_gateway_sends_date_and_server_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``gateway.app.serve`` as run by ``atalaia gateway``: uvicorn's own date and server headers
    are off, so the upstream's come back once; the gateway's own answers still have a date."""
    import gateway.emitter
    from gateway import app as gateway_app

    captured: dict[str, Any] = {}

    class NoEmitter:
        handed_over = restarts = 0

        def __init__(self, *_: Any, **__: Any) -> None:
            pass

        def hand_off(self, call: Any) -> None:
            pass

        def close(self, timeout: float = 0) -> None:
            pass

    def fake_run(app: Any, **options: Any) -> None:
        captured.update(options, app=app)

    monkeypatch.setattr(gateway.emitter, "ProcessEmitter", NoEmitter)
    monkeypatch.setattr(uvicorn, "run", fake_run)
    up_port, gw_port = free_port(), free_port()
    gateway_app.serve(_settings(tmp_path, up_port))
    options = {k: v for k, v in captured.items() if k not in ("app", "host", "port")}
    server = uvicorn.Server(uvicorn.Config(captured["app"], host="127.0.0.1", port=gw_port, **options))
    thread = threading.Thread(target=server.run, daemon=True)
    with running(_upstream(), up_port):
        thread.start()
        while not server.started:
            time.sleep(0.02)
        try:
            proxied = httpx.get(f"http://127.0.0.1:{gw_port}/oai/cookies")
            own = httpx.get(f"http://127.0.0.1:{gw_port}/healthz")
        finally:
            server.should_exit = True
            thread.join(10)
    assert len(proxied.headers.get_list("date")) == 1 and proxied.headers.get_list("server") == ["uvicorn"]
    assert proxied.headers.get_list("set-cookie") == ["a=1", "b=2"]  # repeated headers all come back
    assert len(own.headers.get_list("date")) == 1 and "server" not in own.headers
