"""Chat, batches and streams on top of a backend that yields generated token ids one by one.

ONNX Runtime GenAI (:mod:`atalaia.models.ortgenai`) and OpenVINO GenAI
(:mod:`atalaia.models.ovgenai`) both generate from token ids made by the Hugging Face tokenizer
(their own conversions of this tokenizer are broken). A backend implements
:meth:`TokenLoopGenerator._tokens`; this class turns those ids into the same ``chat``,
``chat_batch`` and ``chat_stream`` as the transformers backend: stop strings matched on the
decoded text, ``max_tokens``, ``<|im_end|>``, usage counts, a length cut that drops a partial
character.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Generator as PyGenerator

from atalaia.models.generator import (
    _DECODE_KWARGS,
    ChatResult,
    ChatStream,
    Generator,
    _find_stop,
    _stop_list,
)

logger = logging.getLogger(__name__)


class TokenLoopGenerator(Generator):
    """A :class:`Generator` whose backend yields token ids (see the module docstring)."""

    def _tokens(
        self, ids: list[int], max_tokens: int, temperature: float, top_p: float, cancel: threading.Event
    ) -> PyGenerator[int, None, None]:
        """Generated token ids, one at a time, until ``<|im_end|>`` (yielded), ``max_tokens`` or
        ``cancel``. Closing the iterator stops the backend before it returns."""
        raise NotImplementedError

    def _prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        enc = self._encode(messages)
        return [int(i) for i in enc["input_ids"][0].tolist()]

    def _finish(
        self, ids: list[int], new: list[int], max_tokens: int, stop: list[str] | None, first_token_at: float | None
    ) -> ChatResult:
        import torch

        return self._result(torch.tensor([ids + new]), len(ids), max_tokens, stop, first_token_at)

    def chat(
        self,
        messages: list[dict[str, str]],
        max_tokens: int = 128,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: list[str] | None = None,
    ) -> ChatResult:
        """As :meth:`Generator.chat`, on this backend."""
        ids = self._prompt_ids(messages)
        self._check(len(ids), max_tokens, temperature, top_p)
        stops = _stop_list(stop)
        new: list[int] = []
        first_token_at: float | None = None  # the end of the prefill, for time to first token
        with (
            self._lock,
            contextlib.closing(self._tokens(ids, max_tokens, temperature, top_p, threading.Event())) as tokens,
        ):
            for token in tokens:
                if first_token_at is None:
                    first_token_at = time.perf_counter()
                new.append(token)
                # Stop as soon as a stop string appears, as the transformers backend does.
                if stops and _find_stop(self.tokenizer.decode(new, **_DECODE_KWARGS), stops) is not None:
                    break
        return self._finish(ids, new, max_tokens, stop, first_token_at)

    #: Chats of a batch run one after another (a backend that batches overrides ``chat_batch``).
    batches = False

    def chat_batch(
        self,
        conversations: list[list[dict[str, str]]],
        max_tokens: int = 128,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: list[str] | None = None,
    ) -> list[ChatResult]:
        """As :meth:`Generator.chat_batch`, one chat at a time (see :attr:`batches`)."""
        return [self.chat(m, max_tokens, temperature, top_p, stop) for m in conversations]

    def chat_stream(
        self,
        messages: list[dict[str, str]],
        max_tokens: int = 128,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: list[str] | None = None,
    ) -> ChatStream:
        """As :meth:`Generator.chat_stream`, on this backend.

        The stream holds the model's lock between ``next()`` calls; closing it (or dropping it)
        stops generation and frees the model at once. ONNX Runtime generates in the consumer's
        thread, one token per ``next()``; OpenVINO in a thread of its own, which may run ahead
        of the consumer up to ``max_tokens`` and ends at its next token once the stream closes.
        """
        ids = self._prompt_ids(messages)
        self._check(len(ids), max_tokens, temperature, top_p)
        return ChatStream(self._stream_token_pieces(ids, max_tokens, temperature, top_p, stop))

    def _stream_token_pieces(
        self,
        ids: list[int],
        max_tokens: int,
        temperature: float,
        top_p: float,
        stop: list[str] | None,
    ) -> PyGenerator[str, None, ChatResult]:
        """The pieces of :meth:`chat_stream`; returns the :class:`ChatResult`.

        It holds no reference to its :class:`ChatStream` (a cycle would keep this frame, and the
        lock held in it, alive until the garbage collector ran after a dropped stream).
        """
        stops = _stop_list(stop)
        # Longest text that could be the beginning of a stop string: held back until resolved.
        hold = max((len(s) for s in stops), default=1) - 1
        new: list[int] = []
        sent = 0
        first_token_at: float | None = None
        cancel = threading.Event()
        with self._lock:
            tokens = self._tokens(ids, max_tokens, temperature, top_p, cancel)
            try:
                for token in tokens:
                    if first_token_at is None:
                        first_token_at = time.perf_counter()
                    new.append(token)
                    text = self.tokenizer.decode(new, **_DECODE_KWARGS)
                    cut = _find_stop(text, stops) if stops else None
                    if cut is not None:
                        if cut > sent:
                            yield text[sent:cut]
                            sent = cut
                        break
                    # A token that ends inside a multi-byte character decodes to U+FFFD until
                    # the next token completes it: never emit text that may still change.
                    safe = len(text.rstrip("\ufffd")) - hold
                    if safe > sent:
                        chunk, sent = text[sent:safe], safe
                        yield chunk
            finally:
                cancel.set()
                tokens.close()
        result = self._finish(ids, new, max_tokens, stop, first_token_at)
        emitted = self.tokenizer.decode(new, **_DECODE_KWARGS)[:sent]
        # The final flush is result.text's tail, which drops a character a length cut split.
        if result.text.startswith(emitted):
            if len(result.text) > len(emitted):
                yield result.text[len(emitted) :]
        else:
            logger.warning("streamed text diverged from the decoded reply: %r vs %r", emitted, result.text)
        return result
