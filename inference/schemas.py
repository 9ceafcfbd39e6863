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


class FunctionCall(BaseModel):
    """The function an assistant's tool call invoked: its name and JSON arguments (a string)."""

    model_config = ConfigDict(extra="ignore")
    name: str = ""
    arguments: str = ""


class ToolCall(BaseModel):
    """One entry of an assistant message's ``tool_calls`` (``type: function``; other types keep
    their ``id`` and type, and are shown to the model by type)."""

    model_config = ConfigDict(extra="ignore")
    id: str = Field(default="", max_length=200)
    type: str = Field(default="function", max_length=64)
    function: FunctionCall | None = None

    @property
    def text(self) -> str:
        """The call as the model reads it, e.g. ``get_weather({"city": "Paris"})``."""
        if self.function is None:
            return f"[{self.type} tool call]"
        return f"{self.function.name}({self.function.arguments})"


class Message(BaseModel):
    """One chat message as the OpenAI API sends it, tool turns included: an assistant message may
    carry ``tool_calls`` (and then ``content`` may be null), and a ``tool`` message the result of
    one call (``tool_call_id``), as the official client sends them in multi-turn tool use."""

    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant", "developer", "tool"]
    # A string, or OpenAI content parts (text, image_url, input_audio, file, ...): the served
    # model reads the text parts; the others are recorded in the event (atalaia.content).
    content: str | list[dict[str, Any]] | None = None
    tool_calls: list[ToolCall] | None = None
    # The deprecated single-call form of tool_calls, still accepted by OpenAI.
    function_call: FunctionCall | None = None
    tool_call_id: str | None = Field(default=None, max_length=200)

    @model_validator(mode="after")
    def _content_required(self) -> Message:
        # OpenAI's rule: only an assistant message that calls tools may leave out its content,
        # and a tool message says which call it answers.
        if self.content is None and not (self.role == "assistant" and (self.tool_calls or self.function_call)):
            raise ValueError("content is required (it may be null only in an assistant message with tool_calls)")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs the tool_call_id of the call it answers")
        return self

    @property
    def calls(self) -> list[ToolCall]:
        """The tool calls of an assistant message (the deprecated ``function_call`` as one)."""
        calls = list(self.tool_calls or [])
        if self.function_call is not None:
            calls.append(ToolCall(function=self.function_call))
        return calls

    @property
    def text(self) -> str:
        """The text the model reads: the content (or its text parts joined by newlines), then one
        line per tool call, so the small local model sees what was called in its chat template
        (and the cache and the canary's sticky key tell different calls apart)."""
        lines = [text_of(self.content)] if self.content else []
        lines += [f"Tool call: {call.text}" for call in self.calls]
        return "\n".join(line for line in lines if line)


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
    # Read only to refuse what this service cannot honour (a 400, never silently ignored; see
    # inference/routes/chat.py): several choices, a JSON output format, a forced tool call,
    # log probabilities, penalties, a logit bias, a sampling seed.
    n: int | None = Field(default=None, ge=1, le=128)
    response_format: dict[str, Any] | None = None
    tool_choice: str | dict[str, Any] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logit_bias: dict[str, Any] | None = None
    seed: int | None = None
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
