"""Fitting an inference event into a byte limit by shortening its longest texts.

A prompt of megabytes (a pasted document, a long history) makes an event larger than Kafka takes.
Dropping the event would lose an answered call; shortening its texts keeps every operational
field (latency, tokens, cost, ids, metadata) and marks what was cut, so the event is still
delivered and anyone reading it knows the texts are partial. When the texts are many but short
(a conversation of thousands of turns), cutting them cannot help: the oldest turns between the
leading system prompt and the latest user message are dropped instead, and counted.

Every size here is in the unit of the limit: bytes of the compact UTF-8 JSON that
:meth:`InferenceEvent.to_json` writes, where a quote, a backslash or a control character takes two
to six bytes and a non-ASCII character its UTF-8 bytes (it is not escaped).
"""

from __future__ import annotations

import copy
import json
from typing import Any

from pydantic_core import to_json

from atalaia.events import InferenceEvent

#: Appended to every text that was shortened.
TRUNCATION_MARKER = " …[truncated by Atalaia]"
#: ``metadata`` key of a shortened event: ``{"original_bytes", "limit", "fields", "kept_bytes"}``,
#: plus ``{"dropped_messages", "dropped_from"}`` (a count and the index of the first one dropped)
#: when whole messages had to go. ``kept_bytes`` is the longest a cut text's JSON encoding may
#: take before its marker.
TRUNCATED_KEY = "atalaia_truncated"
# Room for the metadata flag itself (a few numbers) and for rounding at character boundaries.
_FLAG_ROOM = 256
_MARKER_BYTES = len(TRUNCATION_MARKER.encode("utf-8"))  # nothing in it needs a JSON escape
# Leading messages of these roles are the instructions every later turn depends on: never dropped.
_INSTRUCTION_ROLES = frozenset({"system", "developer"})
# A UTF-8 continuation byte is 0b10xxxxxx: cutting before one would split a character.
_CONTINUATION_MASK, _CONTINUATION = 0xC0, 0x80


def shrink_event(event: InferenceEvent, limit: int) -> InferenceEvent | None:
    """``event`` with its longest texts shortened so that its JSON takes at most ``limit`` bytes.

    Texts are message contents and text parts (system prompts included), the response, the
    reference and retrieved passages: the longest are cut first, all to a common JSON-encoded
    length, each at a character boundary and followed by :data:`TRUNCATION_MARKER`; a media part's
    inline ``data`` (kept only with ``ATALAIA_EVENT_KEEP_MEDIA``) is dropped instead (its size and
    hash stay). When even empty texts would not fit, whole messages are dropped from the middle of
    the conversation (the leading system and developer messages, the last user message and
    everything after it stay). ``metadata[TRUNCATED_KEY]`` records the original size (and the
    number of dropped messages). An event that already fits is returned as is; None when nothing
    of this makes it fit (the rest of the event is too large).

    >>> from atalaia.events import ChatMessage
    >>> event = InferenceEvent(service="s", model_version="m", messages=[ChatMessage(role="user",
    ...     content="é" * 3000)], response="ok", latency_ms=1.0, prompt_tokens=1, completion_tokens=1, cost=0.0)
    >>> small = shrink_event(event, 2000)
    >>> len(small.to_json()) <= 2000, small.response, small.messages[0].content.endswith(TRUNCATION_MARKER)
    (True, 'ok', True)
    >>> small.metadata[TRUNCATED_KEY]["original_bytes"] > 6000
    True
    """
    original = len(event.to_json())
    if original <= limit:
        return event
    data = event.model_dump(mode="json", by_alias=True)
    shrunk = _shrink_texts(data, original, original, limit, {})
    if shrunk is not None:
        return shrunk
    return _drop_messages(data, original, limit)


def _shrink_texts(
    data: dict[str, Any], size: int, original: int, limit: int, flag: dict[str, int]
) -> InferenceEvent | None:
    """The event of ``data`` (``size`` bytes of JSON) with its longest texts cut to fit ``limit``.

    ``original`` is the size of the event as emitted (for the flag); ``flag`` adds to the flag.
    """
    slots = _text_slots(data)
    lengths = [_encoded_length(container[key]) for container, key in slots]
    excess = size - limit + _FLAG_ROOM
    for _ in range(4):  # one pass normally suffices: a cut never keeps more than the cap
        cap = _cap_for(lengths, excess)
        if cap is None:
            return None
        trial = copy.deepcopy(data)  # strings are shared, not copied: cheap even for megabytes
        _cut(_text_slots(trial), cap)
        trial["metadata"] = {
            **trial.get("metadata", {}),
            TRUNCATED_KEY: {
                "original_bytes": original,
                "limit": limit,
                "fields": sum(1 for n in lengths if n > cap + _MARKER_BYTES),
                "kept_bytes": cap,
                **flag,
            },
        }
        shrunk = InferenceEvent.model_validate(trial)
        trial_size = len(shrunk.to_json())
        if trial_size <= limit:
            return shrunk
        excess += trial_size - limit
    return None


#: Messages kept at the end of an agent run when its oldest turns after the user's message go.
KEEP_LAST_TURNS = 8


def _drop_messages(data: dict[str, Any], original: int, limit: int) -> InferenceEvent | None:
    """The event of ``data`` without its oldest messages (then with its texts cut), or None.

    Kept: the leading system/developer messages (the instructions) and the last user message with
    everything after it (the turn that was answered). Dropped first: the fewest of the oldest
    messages in between that, with the texts cut as well, make the event fit. When that is not
    enough (an agent run: one user message, then thousands of assistant and tool turns), all of
    those go and then the oldest turns after the user message, keeping its newest
    :data:`KEEP_LAST_TURNS`. Nothing takes the dropped messages' place: any message put there
    would need a real role and be read as part of the conversation.
    """
    messages: list[dict[str, Any]] = data.get("messages") or []
    head = 0
    while head < len(messages) and messages[head].get("role") in _INSTRUCTION_ROLES:
        head += 1
    users = [i for i, message in enumerate(messages) if message.get("role") == "user"]
    # No user message at all (an odd capture): keep at least the last message.
    tail = max(users[-1] if users else len(messages) - 1, head)
    if tail > head:
        shrunk = _drop_run(data, messages, head, tail, original, limit)
        if shrunk is not None:
            return shrunk
    # Everything before the answered turn is gone and it is still too large: an agent run. Its
    # oldest own turns go too, after the instructions and the user's message, keeping the newest.
    last_user = users[-1] if users else head - 1
    kept = messages[:head] + messages[last_user : last_user + 1] if users else messages[:head]
    rest = messages[last_user + 1 :]
    if len(rest) <= KEEP_LAST_TURNS:
        return None
    compact = kept + rest
    before = max(last_user - head, 0)  # the messages between the instructions and the user's
    return _drop_run(
        {**data, "messages": compact},
        compact,
        len(kept),
        len(compact) - KEEP_LAST_TURNS,
        original,
        limit,
        {"before": before, "from": head if before else last_user + 1},
    )


def _drop_run(
    data: dict[str, Any],
    messages: list[dict[str, Any]],
    start: int,
    stop: int,
    original: int,
    limit: int,
    earlier: dict[str, int] | None = None,
) -> InferenceEvent | None:
    """``data`` without the fewest of ``messages[start:stop]`` (oldest first) that, with the texts
    cut as well, make it fit; None if even all of them do not. ``earlier``: messages already
    dropped before the run (``before``) and the original index of the first dropped (``from``)."""
    excess = len(InferenceEvent.model_validate(data).to_json()) - limit + _FLAG_ROOM
    # What dropping each message saves beyond cutting its texts to nothing: its whole JSON (and a
    # comma) instead of only its texts' length less the marker.
    still_needed = excess - _saved([_encoded_length(c[k]) for c, k in _text_slots(data)], 0)
    gains = []
    for message in messages[start:stop]:
        texts = [_encoded_length(c[k]) for c, k in _text_slots({"messages": [message]})]
        gains.append(len(to_json(message)) + 1 - _saved(texts, 0))
    # At least one: cutting the texts alone was just tried and fell short.
    dropped, gained = 1, gains[0]
    while dropped < len(gains) and gained < still_needed:
        gained += gains[dropped]
        dropped += 1
    while dropped <= stop - start:
        # A tool result without the assistant turn that called it means nothing: drop it too.
        while start + dropped < stop and messages[start + dropped].get("role") == "tool":
            dropped += 1
        trial = {**data, "messages": messages[:start] + messages[start + dropped :]}
        size = len(InferenceEvent.model_validate(trial).to_json())
        if earlier is None:
            flag = {"dropped_messages": dropped, "dropped_from": start}
        else:  # an agent run's own turns, after all of those before its user message
            flag = {
                "dropped_messages": earlier["before"] + dropped,
                "dropped_from": earlier["from"],
                "dropped_after_last_user": dropped,
            }
        shrunk = _shrink_texts(trial, size, original, limit, flag)
        if shrunk is not None or dropped == stop - start:
            return shrunk
        # The estimate fell short (a nested field it does not see): drop more, growing geometrically.
        dropped = min(dropped + max(1, dropped // 8), stop - start)
    return None


def _text_slots(data: dict[str, Any]) -> list[tuple[dict[str, Any], str]]:
    """(container, key) of every string of ``data`` that may be shortened."""
    slots: list[tuple[dict[str, Any], str]] = [(data, "response")] if isinstance(data.get("response"), str) else []
    if isinstance(data.get("reference"), str):
        slots.append((data, "reference"))
    for message in data.get("messages") or []:
        content = message.get("content")
        if isinstance(content, str):
            slots.append((message, "content"))
            continue
        for part in content or []:
            for key in ("text", "data"):
                if isinstance(part.get(key), str):
                    slots.append((part, key))
    slots += [(passage, "text") for passage in data.get("context") or [] if isinstance(passage.get("text"), str)]
    return slots


def _encoded(text: str) -> bytes:
    """``text`` as :meth:`InferenceEvent.to_json` writes it, without the surrounding quotes.

    The same serializer (pydantic-core) as the event's, so the escapes are the same byte for byte.
    """
    return to_json(text)[1:-1]


def _encoded_length(text: str) -> int:
    """Bytes ``text`` takes in the event's JSON, quotes excluded."""
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return len(text)  # the common case needs no encoding; isprintable() rules out controls
    return len(_encoded(text))


def _saved(lengths: list[int], cap: int) -> int:
    """Bytes saved (at least) by cutting every text longer than ``cap`` to ``cap`` bytes plus the marker."""
    return sum(n - cap - _MARKER_BYTES for n in lengths if n > cap + _MARKER_BYTES)


def _cap_for(lengths: list[int], excess: int) -> int | None:
    """The largest common length that saves at least ``excess`` bytes, or None if none does."""
    if _saved(lengths, 0) < excess:
        return None
    low, high = 0, max(lengths, default=0)
    while low < high:  # _saved decreases as the cap grows
        middle = (low + high + 1) // 2
        if _saved(lengths, middle) >= excess:
            low = middle
        else:
            high = middle - 1
    return low


def _prefix(text: str, cap: int) -> str:
    """The longest prefix of ``text`` whose JSON encoding takes at most ``cap`` bytes.

    The encoded bytes are cut, not the text, so the cost is one encoding and one decoding however
    many escapes the text has. The cut backs off to a character boundary and out of a partly kept
    escape (``\\n``, ``\\"``, ``\\u001f``), then the kept bytes are decoded: the encoder of the event
    re-makes exactly these bytes, since JSON escapes each character on its own.
    """
    raw = _encoded(text)
    end = min(cap, len(raw))
    while end and end < len(raw) and raw[end] & _CONTINUATION_MASK == _CONTINUATION:
        end -= 1
    # An escape starts at a backslash preceded by an even run of backslashes (an odd run ends in
    # the second half of "\\"); one starting in the last 6 bytes may be cut short.
    start = raw.rfind(b"\\", max(end - 6, 0), end)
    if start >= 0:
        before = raw[:start]
        run = len(before) - len(before.rstrip(b"\\"))  # in C: a text of backslashes has millions
        if run % 2 == 0:  # ``start`` begins an escape
            width = 6 if raw[start + 1 : start + 2] == b"u" else 2
            if start + width > end:
                end = start
    result: str = json.loads(b'"' + raw[:end] + b'"')
    return result


def _cut(slots: list[tuple[dict[str, Any], str]], cap: int) -> None:
    """Cut every slot longer than ``cap`` bytes (plus the marker) to ``cap`` bytes and the marker."""
    for container, key in slots:
        if _encoded_length(container[key]) <= cap + _MARKER_BYTES:
            continue
        if key == "data":  # half a base64 payload is no use to anyone: size and hash stay
            container[key] = None
        else:
            container[key] = _prefix(container[key], cap) + TRUNCATION_MARKER
