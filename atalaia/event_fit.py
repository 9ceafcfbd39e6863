"""Fitting an inference event into a byte limit by shortening its longest texts.

A prompt of megabytes (a pasted document, a long history) makes an event larger than Kafka takes.
Dropping the event would lose an answered call; shortening its texts keeps every operational
field (latency, tokens, cost, ids, metadata) and marks what was cut, so the event is still
delivered and anyone reading it knows the texts are partial.
"""

from __future__ import annotations

import copy
from typing import Any

from atalaia.events import InferenceEvent

#: Appended to every text that was shortened.
TRUNCATION_MARKER = " …[truncated by Atalaia]"
#: ``metadata`` key of a shortened event: ``{"original_bytes", "limit", "fields", "kept_bytes"}``.
TRUNCATED_KEY = "atalaia_truncated"
# Room for the metadata flag itself (a few numbers) and for rounding at character boundaries.
_FLAG_ROOM = 256
_MARKER_BYTES = len(TRUNCATION_MARKER.encode("utf-8"))


def shrink_event(event: InferenceEvent, limit: int) -> InferenceEvent | None:
    """``event`` with its longest texts shortened so that its JSON takes at most ``limit`` bytes.

    Texts are message contents and text parts (system prompts included), the response, the
    reference and retrieved passages: the longest are cut first, all to a common length, each at a
    UTF-8 character boundary and followed by :data:`TRUNCATION_MARKER`; a media part's inline
    ``data`` (kept only with ``ATALAIA_EVENT_KEEP_MEDIA``) is dropped instead (its size and hash
    stay). ``metadata[TRUNCATED_KEY]`` records the original size. An event that already fits is
    returned as is; None when even empty texts would not fit (the rest of the event is too large).

    >>> from atalaia.events import ChatMessage
    >>> event = InferenceEvent(service="s", model_version="m", messages=[ChatMessage(role="user",
    ...     content="é" * 3000)], response="ok", latency_ms=1.0, prompt_tokens=1, completion_tokens=1, cost=0.0)
    >>> small = shrink_event(event, 2000)
    >>> len(small.to_json()) <= 2000, small.response, small.messages[0].content.endswith(TRUNCATION_MARKER)
    (True, 'ok', True)
    >>> small.metadata[TRUNCATED_KEY]["original_bytes"] > 6000
    True
    """
    encoded = event.to_json()
    original = len(encoded)
    if original <= limit:
        return event
    data = event.model_dump(mode="json", by_alias=True)
    slots = _text_slots(data)
    lengths = [len(container[key].encode("utf-8")) for container, key in slots]
    excess = original - limit + _FLAG_ROOM
    for _ in range(4):  # one pass normally suffices; JSON escapes only make a cut save more
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
            },
        }
        shrunk = InferenceEvent.model_validate(trial)
        size = len(shrunk.to_json())
        if size <= limit:
            return shrunk
        excess += size - limit
    return None


def _text_slots(data: dict[str, Any]) -> list[tuple[dict[str, Any], str]]:
    """(container, key) of every string of ``data`` that may be shortened."""
    slots: list[tuple[dict[str, Any], str]] = [(data, "response")]
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


def _saved(lengths: list[int], cap: int) -> int:
    """Bytes saved by cutting every text longer than ``cap`` to ``cap`` bytes plus the marker."""
    return sum(n - cap - _MARKER_BYTES for n in lengths if n > cap + _MARKER_BYTES)


def _cap_for(lengths: list[int], excess: int) -> int | None:
    """The largest common length that saves at least ``excess`` bytes, or None if none does."""
    if _saved(lengths, 0) < excess:
        return None
    low, high = 0, max(lengths)
    while low < high:  # _saved decreases as the cap grows
        middle = (low + high + 1) // 2
        if _saved(lengths, middle) >= excess:
            low = middle
        else:
            high = middle - 1
    return low


def _cut(slots: list[tuple[dict[str, Any], str]], cap: int) -> None:
    """Cut every slot longer than ``cap`` bytes (plus the marker) to ``cap`` bytes and the marker."""
    for container, key in slots:
        raw = container[key].encode("utf-8")
        if len(raw) <= cap + _MARKER_BYTES:
            continue
        if key == "data":  # half a base64 payload is no use to anyone: size and hash stay
            container[key] = None
        else:  # "ignore" drops a character split by the cut instead of producing invalid UTF-8
            container[key] = raw[:cap].decode("utf-8", "ignore") + TRUNCATION_MARKER
