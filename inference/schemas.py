"""Request and response bodies of the OpenAI-compatible API."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from atalaia.content import text_of
from atalaia.events import EventError, check_storable_text


class _Request(BaseModel):
    """A request body whose text can travel in an event: JSON may escape a NUL (``\\u0000``) or
    a lone surrogate (``\\ud800``), which no event, spool or database can hold; refused as a 400
    here instead of failing with a 500 when the request's event is written."""

    @model_validator(mode="before")
    @classmethod
    def _storable_text(cls, data: Any) -> Any:
        try:
            check_storable_text(data, "request")
        except EventError as exc:
            raise ValueError(exc.reason) from None
        return data


class Message(BaseModel):
    """One chat message as the OpenAI API sends it."""

    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant", "developer"]
    # A string, or OpenAI content parts (text, image_url, input_audio, file, ...): the served
    # model reads the text parts; the others are recorded in the event (atalaia.content).
    content: str | list[dict[str, Any]]

    @property
    def text(self) -> str:
        """The text the model reads: the content, or its text parts joined by newlines."""
        return text_of(self.content)


class ChatCompletionRequest(_Request):
    """Body of ``POST /v1/chat/completions``; unknown OpenAI fields are accepted and ignored."""

    model_config = ConfigDict(extra="ignore")
    model: str = Field(min_length=1)
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stream: bool = False
    stream_options: dict[str, Any] | None = None  # {"include_usage": true}: a last chunk with the usage
    stop: str | list[str] | None = None
    # The end user: stored only as the event's subject_id, a keyed hash (atalaia.privacy).
    user: str | None = Field(None, max_length=200)
    metadata: dict[str, Any] | None = None


class FeedbackRequest(_Request):
    """Body of ``POST /v1/feedback``: a judgement of an earlier completion."""

    model_config = ConfigDict(extra="forbid")
    completion_id: str = Field(min_length=1, description="the `id` of the chat completion (chatcmpl-<event id>)")
    rating: int | None = Field(None, ge=-1, le=1)
    corrected_answer: str | None = Field(None, max_length=20_000)
    comment: str | None = Field(None, max_length=5_000)
    metadata: dict[str, Any] = Field(default_factory=dict)
    user: str | None = Field(None, max_length=200, description="the end user; stored as a keyed hash (subject_id)")


class DeployRequest(_Request):
    """Body of ``POST /admin/deploy``: serve this model folder as this version."""

    model_config = ConfigDict(extra="forbid")
    model_version: str = Field(min_length=1, max_length=200)
    artefact_path: str | None = Field(None, description="model folder (safetensors + tokenizer)")
    reason: str | None = Field(None, max_length=500)


class RollbackRequest(_Request):
    """Body of ``POST /admin/rollback``: go back to the previous version (optionally named)."""

    model_config = ConfigDict(extra="forbid")
    model_version: str | None = Field(None, max_length=200)
    reason: str | None = Field(None, max_length=500)
