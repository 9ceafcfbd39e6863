"""Building the events the inference service emits: one ``InferenceEvent`` per answer, one
``FeedbackEvent`` per feedback request.

Kept apart from the routes so what goes into an event (redacted media, the keyed subject hash,
the caller, the cost with the cached-answer rule, the time to first token) is decided in one place.
"""

from __future__ import annotations

import uuid
from typing import Any

from atalaia.content import openai_content, text_of
from atalaia.events import (
    ATALAIA_PROVIDER,
    ChatMessage,
    ContentPart,
    FeedbackEvent,
    InferenceEvent,
    RetrievedPassage,
)
from atalaia.metrics.operational import request_cost
from atalaia.models.generator import ChatResult
from atalaia.settings import Settings
from atalaia.subjects import subject_id, subject_pepper
from inference.auth import current_caller
from inference.schemas import ChatCompletionRequest, FeedbackRequest, Message


def completion_id(event_id: uuid.UUID) -> str:
    """The public completion id, from which feedback finds the event.

    >>> completion_id(uuid.UUID(int=1))
    'chatcmpl-00000000-0000-0000-0000-000000000001'
    """
    return f"chatcmpl-{event_id}"


def time_to_first_token_ms(
    result: ChatResult, started: float | None, latency_ms: float, cache_hit: str | None
) -> float | None:
    """From the request's start to the model's first token, within ``[0, latency_ms]``.

    ``None`` for a cached answer (no token was generated) or when either time is unknown.
    """
    if started is None or cache_hit or result.first_token_at is None:
        return None
    return min(max((result.first_token_at - started) * 1000.0, 0.0), latency_ms)


class EventBuilder:
    """Builds the service's events from requests and results, with the settings read once."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # The request's `user` is stored only as a keyed hash (atalaia.privacy): read the key once.
        self.pepper = subject_pepper(settings)
        self.keep_media = settings.event_keep_media

    def subject(self, user: str | None) -> str | None:
        """The keyed hash of a request's ``user``, or ``None`` without one."""
        return subject_id(user, self.pepper) if user else None

    def message(self, message: Message) -> ChatMessage:
        """A request's message as event content; tool turns as the kernel's ``tool_call`` and
        ``tool_call_response`` parts (atalaia.content), as the other adapters record them.

        A call's JSON arguments go in its part's ``text``, which redaction covers (it does not
        look into a part's extra fields); a tool message's result is the text of its part.
        """
        content = openai_content(message.content, self.keep_media)
        if message.role == "tool":
            result = text_of(message.content)
            return ChatMessage(
                role="tool",
                content=[ContentPart(type="tool_call_response", id=message.tool_call_id, text=result or None)],  # type: ignore[call-arg]
            )
        calls = message.calls
        if not calls:
            return ChatMessage(role=message.role, content=content)
        parts = (
            list(content) if isinstance(content, list) else [ContentPart(type="text", text=content)] if content else []
        )
        parts += [
            ContentPart(  # type: ignore[call-arg]
                type="tool_call",
                id=call.id or None,
                name=call.function.name if call.function else None,
                text=call.function.arguments if call.function and call.function.arguments else None,
            )
            for call in calls
        ]
        return ChatMessage(role=message.role, content=parts)

    def inference(
        self,
        version: str,
        req: ChatCompletionRequest,
        result: ChatResult,
        latency_ms: float,
        event_id: uuid.UUID,
        max_tokens: int,
        context: list[RetrievedPassage] | None = None,
        cache_hit: str | None = None,
        started: float | None = None,
        shadow: bool = False,
    ) -> InferenceEvent:
        """The event of one answer (``cache_hit``: the cache's kind of hit, or ``None``; ``shadow``: a
        canary candidate's answer that was scored but never returned)."""
        meta: dict[str, Any] = dict(req.metadata or {})
        reference = meta.pop("reference", None)
        return InferenceEvent(
            event_id=event_id,
            service=self.settings.service_name,
            model_version=version,
            provider=ATALAIA_PROVIDER,
            messages=[self.message(m) for m in req.messages],
            response=result.text,
            latency_ms=latency_ms,
            time_to_first_token_ms=time_to_first_token_ms(result, started, latency_ms, cache_hit),
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
            cost=request_cost(
                self.settings.price_for(version), result.prompt_tokens, result.completion_tokens, bool(cache_hit)
            ),
            context=context or [],
            cache_hit=bool(cache_hit),
            # Schema version 2's own field; ``metadata.finish_reason`` below stays for older readers.
            finish_reason=result.finish_reason,
            reference=reference if isinstance(reference, str) else None,
            subject_id=self.subject(req.user),
            caller=current_caller.get(),
            metadata={
                **meta,
                **({"cache": cache_hit} if cache_hit else {}),
                "max_tokens": max_tokens,
                "temperature": req.temperature,
                "finish_reason": result.finish_reason,
                # A canary's shadow answer: scored, never returned to the caller.
                **({"shadow": True} if shadow else {}),
            },
        )

    def feedback(self, req: FeedbackRequest, inference_id: uuid.UUID) -> FeedbackEvent:
        """The event of one feedback request about the answer ``inference_id``."""
        return FeedbackEvent(
            inference_event_id=inference_id,
            rating=req.rating,
            corrected_answer=req.corrected_answer,
            comment=req.comment,
            metadata=req.metadata,
            subject_id=self.subject(req.user),
            caller=current_caller.get(),
        )
