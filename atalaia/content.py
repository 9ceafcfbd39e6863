"""Multimodal message content: provider formats (OpenAI, Anthropic, OpenTelemetry GenAI) to
:class:`~atalaia.events.ContentPart` lists.

Text parts keep their text. Every other part (image, audio, file, or a type no one told us
about) is recorded as its type, MIME type, size and SHA-256 of its bytes; the bytes themselves
travel only when ``keep_media`` is set (``ATALAIA_EVENT_KEEP_MEDIA``), since images and audio
would blow up events, topics and the database. Nothing here raises for an unexpected shape: an
unknown part becomes ``ContentPart(type=<its type or "unknown">)``.

>>> parts = openai_content([{"type": "text", "text": "what is this?"},
...     {"type": "image_url", "image_url": {"url": "data:image/png;base64,aGVsbG8="}}])
>>> [(p.type, p.text, p.mime_type, p.size_bytes) for p in parts]
[('text', 'what is this?', None, None), ('image', None, 'image/png', 5)]
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Callable
from typing import Any

from atalaia.events import ContentPart

#: OpenAI ``input_audio.format`` to MIME type.
_AUDIO_FORMATS = {
    "wav": "audio/wav",
    "mp3": "audio/mpeg",
    "flac": "audio/flac",
    "ogg": "audio/ogg",
    "pcm16": "audio/pcm",
}
_OPENAI_MEDIA_TYPES = {"image_url": "image", "input_image": "image", "input_audio": "audio", "file": "file"}


def media_part(
    kind: str, mime_type: str | None, data: bytes | None, keep_media: bool, uri: str | None = None
) -> ContentPart:
    """A non-text part: its bytes (if given) summarised by size and SHA-256, kept only on request.

    >>> media_part("audio", "audio/wav", b"abc", keep_media=False).sha256[:8]
    'ba7816bf'
    """
    if data is None:
        return ContentPart(type=kind, mime_type=mime_type, uri=uri)
    return ContentPart(
        type=kind,
        mime_type=mime_type,
        size_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        uri=uri,
        data=base64.b64encode(data).decode() if keep_media else None,
    )


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _b64(data: Any) -> bytes | None:
    if not isinstance(data, str):
        return None
    try:
        return base64.b64decode(data, validate=False)
    except (binascii.Error, ValueError):
        return data.encode()  # not base64 after all: hash what was sent


def data_url(url: Any) -> tuple[str | None, bytes | None, str | None]:
    """(MIME type, bytes, uri) of an image URL: a ``data:`` URL is decoded, any other URL kept as uri.

    >>> data_url("data:image/jpeg;base64,AAEC")[:2]
    ('image/jpeg', b'\\x00\\x01\\x02')
    >>> data_url("https://example.com/cat.png")
    (None, None, 'https://example.com/cat.png')
    """
    if not isinstance(url, str):
        return None, None, None
    if url.startswith("data:") and "," in url:
        header, payload = url[5:].split(",", 1)
        mime = header.split(";", 1)[0] or None
        return mime, _b64(payload) if ";base64" in header else payload.encode(), None
    return None, None, url[:2000]


def _each_part(content: Any, convert: Callable[[str, dict[str, Any]], ContentPart]) -> str | list[ContentPart]:
    """Content as text, or each dict part as ``convert(type, part)`` (anything else: ``unknown``)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return str(content)
    return [
        convert(str(i.get("type") or "unknown")[:64], i) if isinstance(i, dict) else ContentPart(type="unknown")
        for i in content
    ]


def openai_content(content: Any, keep_media: bool = False) -> str | list[ContentPart]:
    """An OpenAI Chat Completions ``content`` (a string, or a list of parts) as event content."""

    def convert(kind: str, item: dict[str, Any]) -> ContentPart:
        if kind in ("text", "input_text", "output_text", "refusal"):
            return ContentPart(type="text", text=str(item.get("text") or item.get("refusal") or ""))
        if kind in ("image_url", "input_image"):
            ref = item.get("image_url")
            url = ref.get("url") if isinstance(ref, dict) else ref
            mime, data, uri = data_url(url)
            return media_part("image", mime, data, keep_media, uri)
        if kind == "input_audio":
            audio = _dict(item.get("input_audio"))
            fmt = str(audio.get("format") or "")
            mime = _AUDIO_FORMATS.get(fmt, f"audio/{fmt}" if fmt else None)
            return media_part("audio", mime, _b64(audio.get("data")), keep_media)
        if kind == "file":
            ref = _dict(item.get("file"))
            mime, data, _ = data_url(ref.get("file_data"))
            return media_part("file", mime, data, keep_media, ref.get("file_id") or ref.get("filename"))
        return ContentPart(type=_OPENAI_MEDIA_TYPES.get(kind, kind))

    return _each_part(content, convert)


def anthropic_content(content: Any, keep_media: bool = False) -> str | list[ContentPart]:
    """An Anthropic Messages ``content`` (a string, or a list of content blocks) as event content.

    >>> call, result = anthropic_content([
    ...     {"type": "tool_use", "id": "t1", "name": "weather", "input": {"city": "Porto"}},
    ...     {"type": "tool_result", "tool_use_id": "t1", "content": "sunny"}])
    >>> call.text, result.id, result.text
    ('{"city": "Porto"}', 't1', 'sunny')
    """

    def convert(kind: str, block: dict[str, Any]) -> ContentPart:
        if kind == "text":
            return ContentPart(type="text", text=str(block.get("text") or ""))
        if kind in ("image", "document"):
            source = _dict(block.get("source"))
            data = _b64(source.get("data")) if source.get("type") == "base64" else None
            if source.get("type") == "text" and isinstance(source.get("data"), str):
                data = source["data"].encode()
            uri = source.get("url") or source.get("file_id")
            return media_part("image" if kind == "image" else "file", source.get("media_type"), data, keep_media, uri)
        if kind == "tool_result":
            inner = block.get("content")
            text = inner if isinstance(inner, str) else ""
            if isinstance(inner, list):
                text = "\n".join(
                    str(b.get("text", "")) for b in inner if isinstance(b, dict) and b.get("type") == "text"
                )
            call_id = block.get("tool_use_id")
            return ContentPart(  # type: ignore[call-arg]
                type="tool_call_response", text=text or None, id=call_id if isinstance(call_id, str) else None
            )
        if kind == "tool_use":
            # The call's input in ``text``, as the OpenAI and OTLP routes keep arguments (redacted there).
            given = block.get("input")
            arguments = json.dumps(given, ensure_ascii=False) if given not in (None, {}) else None
            return ContentPart(type="tool_call", name=block.get("name"), id=block.get("id"), text=arguments)  # type: ignore[call-arg]
        return ContentPart(type=kind)

    return _each_part(content, convert)


def otel_parts(parts: Any, keep_media: bool = False) -> str | list[ContentPart]:
    """The ``parts`` of an OpenTelemetry GenAI message (``gen_ai.input.messages``) as event content.

    A message of text parts only becomes a plain string, as most events are.

    >>> otel_parts([{"type": "text", "content": "hi"}])
    'hi'
    """
    if isinstance(parts, str):
        return parts
    if not isinstance(parts, list):
        return ""
    out: list[ContentPart] = []
    for part in parts:
        if not isinstance(part, dict):
            out.append(ContentPart(type="unknown"))
            continue
        kind = str(part.get("type") or "unknown")[:64]
        if kind in ("text", "reasoning"):
            value = part.get("content")
            out.append(
                ContentPart(type="text" if kind == "text" else kind, text=value if isinstance(value, str) else "")
            )
        elif kind == "blob":
            modality = str(part.get("modality") or "file")
            out.append(media_part(modality, part.get("mime_type"), _b64(part.get("content")), keep_media))
        elif kind in ("uri", "file"):
            modality = str(part.get("modality") or "file")
            out.append(
                media_part(modality, part.get("mime_type"), None, keep_media, part.get("uri") or part.get("file_id"))
            )
        elif kind == "tool_call":
            out.append(ContentPart(type="tool_call", name=part.get("name"), id=part.get("id")))  # type: ignore[call-arg]
        elif kind == "tool_call_response":
            value = part.get("response")
            out.append(ContentPart(type="tool_call_response", text=value if isinstance(value, str) else None))
        else:
            out.append(ContentPart(type=kind))
    if all(p.type == "text" for p in out):
        return "\n".join(p.text or "" for p in out)
    return out


def text_of(content: Any) -> str:
    """The text of any content: a string, or the text parts of a list (dicts or parts).

    >>> text_of([{"type": "text", "text": "a"}, {"type": "image_url"}, {"type": "text", "text": "b"}])
    'a\\nb'
    """
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    texts = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else getattr(part, "type", None)
        text = part.get("text") if isinstance(part, dict) else getattr(part, "text", None)
        if kind in ("text", "input_text", "output_text") and isinstance(text, str) and text:
            texts.append(text)
    return "\n".join(texts)
