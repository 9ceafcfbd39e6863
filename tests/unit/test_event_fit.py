"""Shortening an inference event's texts to fit a byte limit (atalaia/event_fit.py)."""

from __future__ import annotations

import pytest

from atalaia.event_fit import TRUNCATED_KEY, TRUNCATION_MARKER, shrink_event
from atalaia.events import ChatMessage, ContentPart, InferenceEvent, RetrievedPassage, parse_event


def _event(**fields: object) -> InferenceEvent:
    base: dict[str, object] = {
        "service": "svc",
        "model_version": "m",
        "messages": [ChatMessage(role="user", content="hi")],
        "response": "ok",
        "latency_ms": 12.5,
        "prompt_tokens": 1_000_000,
        "completion_tokens": 3,
        "cost": 0.25,
        "metadata": {"source": "gateway", "upstream": "openai"},
    }
    return InferenceEvent(**{**base, **fields})  # type: ignore[arg-type]


@pytest.mark.parametrize("limit", [2_000, 10_000, 100_000])
def test_the_limit_is_honoured_and_the_event_still_parses(limit: int) -> None:
    event = _event(
        messages=[
            ChatMessage(role="system", content="rules " * 20_000),
            ChatMessage(
                role="user", content=[ContentPart(type="text", text="doc " * 30_000), ContentPart(type="image")]
            ),
        ],
        response="answer " * 10_000,
        context=[RetrievedPassage(id="p1", text="passage " * 5_000)],
    )
    shrunk = shrink_event(event, limit)
    assert shrunk is not None
    raw = shrunk.to_json()
    assert len(raw) <= limit
    back = parse_event(raw)
    assert isinstance(back, InferenceEvent) and back.event_id == event.event_id
    # Operational fields are untouched; the flag says what happened.
    assert (back.latency_ms, back.prompt_tokens, back.completion_tokens, back.cost) == (12.5, 1_000_000, 3, 0.25)
    assert back.metadata["source"] == "gateway" and back.metadata["upstream"] == "openai"
    flag = back.metadata[TRUNCATED_KEY]
    assert flag["original_bytes"] == len(event.to_json()) and flag["limit"] == limit and flag["fields"] >= 3
    parts = back.messages[1].content
    assert isinstance(parts, list) and parts[1].type == "image"  # parts keep their order and kinds


def test_short_texts_are_kept_and_only_the_longest_are_cut() -> None:
    event = _event(messages=[ChatMessage(role="user", content="Summarise: " + "x" * 50_000)], response="Short answer.")
    shrunk = shrink_event(event, 20_000)
    assert shrunk is not None and shrunk.response == "Short answer."
    content = shrunk.messages[0].content
    assert isinstance(content, str) and content.startswith("Summarise: xxx") and content.endswith(TRUNCATION_MARKER)


def test_multibyte_text_is_never_split_inside_a_character() -> None:
    for text in ("é" * 40_000, "日本語" * 20_000, "🙂" * 20_000, "a" + "🙂" * 20_000):
        shrunk = shrink_event(_event(response=text), 5_001)
        assert shrunk is not None and len(shrunk.to_json()) <= 5_001
        kept = shrunk.response.removesuffix(TRUNCATION_MARKER)
        assert kept and text.startswith(kept)  # a prefix of whole characters, nothing replaced


def test_an_event_that_fits_is_returned_as_is() -> None:
    event = _event()
    assert shrink_event(event, 10_000) is event


def test_inline_media_data_is_dropped_not_cut() -> None:
    part = ContentPart(type="image", mime_type="image/png", size_bytes=600_000, sha256="ab" * 32, data="A" * 800_000)
    shrunk = shrink_event(_event(messages=[ChatMessage(role="user", content=[part])]), 50_000)
    assert shrunk is not None
    parts = shrunk.messages[0].content
    assert isinstance(parts, list)
    (kept,) = parts
    assert kept.data is None and kept.size_bytes == 600_000 and kept.sha256


def test_none_when_nothing_shortenable_is_large_enough() -> None:
    event = _event(metadata={"blob": "x" * 50_000}, response="y" * 100)
    assert shrink_event(event, 10_000) is None


# -- JSON escapes: sizes are counted as the event's JSON writes them ---------------------------
@pytest.mark.parametrize("size", [10_000, 200_000, 2_000_000])
@pytest.mark.parametrize("unit", ['"', "\n", "\x01", '\\"\n\x01\t{"k": [1]}'])
def test_escape_heavy_texts_fit_and_stay_whole_prefixes(size: int, unit: str) -> None:
    # A quote or newline takes 2 bytes of JSON, a control character 6: the encoded text is 2 to 6
    # times its raw size, and an event of it used to be refused instead of shortened.
    text = unit * (size // len(unit))
    event = _event(messages=[ChatMessage(role="tool", content=text)])
    limit = 5_000 if size == 10_000 else 100_000
    shrunk = shrink_event(event, limit)
    assert shrunk is not None
    raw = shrunk.to_json()
    assert len(raw) <= limit
    back = parse_event(raw)
    content = back.messages[0].content
    assert isinstance(content, str) and content.endswith(TRUNCATION_MARKER)
    kept = content.removesuffix(TRUNCATION_MARKER)
    assert kept and text.startswith(kept)  # whole characters: no half escape survives a round trip
    # The cut keeps close to the cap: little is thrown away beyond what the limit needs.
    assert len(raw) > limit - 400


def test_mixed_escapes_and_multibyte_just_above_the_overhead() -> None:
    text = 'é"🙂\n\x01\\日' * 50_000
    event = _event(response=text)
    overhead = len(_event(response="").to_json()) + 300  # the flag and the marker need room too
    for limit in range(overhead, overhead + 40):
        shrunk = shrink_event(event, limit)
        assert shrunk is not None, limit
        raw = shrunk.to_json()
        assert len(raw) <= limit
        kept = parse_event(raw).response.removesuffix(TRUNCATION_MARKER)  # type: ignore[union-attr]
        assert text.startswith(kept)


def test_an_escape_heavy_multi_megabyte_text_is_cut_quickly() -> None:
    import time

    text = '"\n\x01é🙂' * 1_200_000  # about 8 MB of raw text and 13 MB of JSON
    event = _event(messages=[ChatMessage(role="tool", content=text)])
    started = time.perf_counter()
    shrunk = shrink_event(event, 900_000)
    elapsed = time.perf_counter() - started
    assert shrunk is not None and len(shrunk.to_json()) <= 900_000
    assert elapsed < 3.0  # about 0.2 s on a shared 2-CPU machine: one encoding, one decoding per text


# -- many short messages: whole middle messages are dropped --------------------------------------
def test_many_tiny_messages_lose_their_oldest_middle_turns() -> None:
    system = ChatMessage(role="system", content="be brief")
    history = [ChatMessage(role="user" if i % 2 else "assistant", content="a") for i in range(60_000)]
    last = [ChatMessage(role="user", content="the question"), ChatMessage(role="assistant", content="a tool call")]
    event = _event(messages=[system, *history, *last])
    assert len(event.to_json()) > 1_500_000  # nothing to cut: every text is a few bytes
    shrunk = shrink_event(event, 900_000)
    assert shrunk is not None
    raw = shrunk.to_json()
    assert len(raw) <= 900_000
    back = parse_event(raw)
    assert isinstance(back, InferenceEvent)
    messages = back.messages
    # The instructions and the answered turn stay; the newest of the history is what remains of it.
    assert messages[0] == system and messages[-2:] == last
    flag = back.metadata[TRUNCATED_KEY]
    assert flag["dropped_from"] == 1 and flag["dropped_messages"] == len(event.messages) - len(messages)
    assert messages[1:-2] == history[flag["dropped_messages"] :]
    assert flag["original_bytes"] == len(event.to_json())
    assert len(raw) > 900_000 - 2_000  # no more dropped than needed
    assert back.metadata["source"] == "gateway" and back.latency_ms == 12.5


def test_dropping_messages_also_cuts_the_long_texts_that_stay() -> None:
    history = [ChatMessage(role="user", content="q"), ChatMessage(role="assistant", content="a")] * 20_000
    event = _event(messages=[*history, ChatMessage(role="user", content="x" * 500_000)], response="y" * 500_000)
    shrunk = shrink_event(event, 300_000)
    assert shrunk is not None and len(shrunk.to_json()) <= 300_000
    assert shrunk.messages[-1].content.endswith(TRUNCATION_MARKER)  # type: ignore[union-attr]
    assert shrunk.response.endswith(TRUNCATION_MARKER)
    assert shrunk.metadata[TRUNCATED_KEY]["dropped_messages"] > 0


def test_a_tool_result_is_not_kept_without_its_call() -> None:
    turn = [
        ChatMessage(role="user", content="q"),
        ChatMessage(role="assistant", content="", tool_calls=[{"id": "c", "type": "function"}]),  # type: ignore[call-arg]
        ChatMessage(role="tool", content="r", tool_call_id="c"),  # type: ignore[call-arg]
    ]
    event = _event(messages=[*turn * 10_000, ChatMessage(role="user", content="last")])
    shrunk = shrink_event(event, len(event.to_json()) // 2)
    assert shrunk is not None and shrunk.messages[0].role != "tool"


def test_an_agent_run_loses_its_oldest_turns_after_the_user_message() -> None:
    # One user message, then thousands of assistant / tool turns: nothing lies between the
    # instructions and the user's message, so the run's own oldest turns must go.
    system, user = ChatMessage(role="system", content="be brief"), ChatMessage(role="user", content="do it")
    turns = [
        m
        for i in range(4000)
        for m in (
            ChatMessage(role="assistant", content=f"calling tool number {i}"),
            ChatMessage(role="tool", content=f"result {i}", tool_call_id=f"c{i}"),  # type: ignore[call-arg]
        )
    ]
    event = _event(messages=[system, user, *turns])
    shrunk = shrink_event(event, 100_000)
    assert shrunk is not None and len(shrunk.to_json()) <= 100_000
    messages = shrunk.messages
    assert messages[:2] == [system, user] and messages[-8:] == turns[-8:]
    assert messages[2].role == "assistant"  # no tool result left without its call
    assert messages[2:] == turns[len(turns) - (len(messages) - 2) :]  # the newest turns, in order
    flag = shrunk.metadata[TRUNCATED_KEY]
    assert flag["dropped_messages"] == flag["dropped_after_last_user"] == len(turns) - (len(messages) - 2)
    assert flag["dropped_from"] == 2


def test_none_when_only_the_kept_messages_remain_too_large() -> None:
    # Nothing between the instructions and the last user message: nothing may be dropped.
    event = _event(messages=[ChatMessage(role="system", content="")] * 40_000 + [ChatMessage(role="user", content="")])
    assert shrink_event(event, 100_000) is None
