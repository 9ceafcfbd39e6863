"""The chat generator: SmolLM2-135M-Instruct served from the safetensors folder made by
:func:`atalaia.models.prepare.prepare_generator`.

One :class:`Generator` holds one model; generation is serialised by a lock because a single
CPU model gains nothing from concurrent ``generate`` calls (they would only fight for the same
cores) and the tokenizer is not safe to share across threads mid-call.

Examples
--------
>>> gen = Generator.load(settings.generator_path)                       # doctest: +SKIP
>>> gen.chat([{"role": "user", "content": "Hi"}], max_tokens=16).text     # doctest: +SKIP
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Generator as PyGenerator
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

    from atalaia.settings import Settings

logger = logging.getLogger(__name__)

IM_END = "<|im_end|>"
# The same decoding for chat() and the streamer, so streamed pieces join to the same text.
# No space clean-up: it is meant for WordPiece and would eat spaces before punctuation in BPE.
_DECODE_KWARGS: dict[str, bool] = {"skip_special_tokens": True, "clean_up_tokenization_spaces": False}
FinishReason = Literal["stop", "length"]


class GeneratorNotPreparedError(FileNotFoundError):
    """The generator folder is missing; run ``atalaia models prepare``."""


class PromptTooLongError(ValueError):
    """Prompt tokens plus ``max_tokens`` exceed the model's context length.

    Attributes
    ----------
    prompt_tokens, max_tokens, context_length : int
        The numbers behind the refusal, for an HTTP 400 body.
    """

    def __init__(self, prompt_tokens: int, max_tokens: int, context_length: int) -> None:
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self.context_length = context_length
        super().__init__(
            f"prompt has {prompt_tokens} tokens and max_tokens is {max_tokens}: together more than the "
            f"model's context length of {context_length}. Shorten the messages or lower max_tokens."
        )


@dataclass(frozen=True)
class ChatResult:
    """Outcome of one chat completion.

    Attributes
    ----------
    text : str
        The assistant's reply, without ``<|im_end|>`` and cut before any stop string.
    prompt_tokens : int
        Tokens of the templated prompt.
    completion_tokens : int
        Tokens the model generated, including the closing ``<|im_end|>`` when it produced one
        and any tokens of a matched stop string (the work done, as OpenAI-style servers count).
    finish_reason : {'stop', 'length'}
        ``'length'`` when ``max_tokens`` ran out, otherwise ``'stop'``.
    first_token_at : float or None
        ``time.perf_counter()`` when the model produced its first token (the end of the prefill),
        for the caller's time to first token; ``None`` when unknown. Not part of equality.
    """

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: FinishReason
    first_token_at: float | None = field(default=None, compare=False)

    @property
    def total_tokens(self) -> int:
        """Prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens


class ChatStream:
    """Iterator over the text pieces of a streamed reply; ``result`` is set once it is exhausted.

    Generation starts on the first ``next()``. To stop early, call :meth:`close` (or iterate
    inside ``with stream:``): generation is cancelled at the next token and the model is freed.
    :meth:`close` may be called from another thread while ``next()`` runs (an HTTP server
    closing the stream on disconnect): the pieces are then closed as that ``next()`` returns.
    Dropping the last reference to the stream also closes it at once: the pieces iterator
    hands its :class:`ChatResult` back as its return value instead of holding a reference to
    the stream, so no reference cycle waits for the garbage collector.

    Examples
    --------
    >>> stream = gen.chat_stream(messages)            # doctest: +SKIP
    >>> text = "".join(stream)                        # doctest: +SKIP
    >>> stream.result.completion_tokens               # doctest: +SKIP
    """

    def __init__(self, pieces: Iterator[str]) -> None:
        #: The text pieces; a generator may ``return`` the :class:`ChatResult` at its end.
        self._pieces = pieces
        self.result: ChatResult | None = None
        self._closed = False
        # Held while next() runs: a generator cannot be closed while it executes in another
        # thread ("generator already executing"), so close() then leaves it to next().
        self._busy = threading.Lock()

    def __iter__(self) -> ChatStream:
        return self

    def __next__(self) -> str:
        try:
            with self._busy:
                if self._closed:
                    raise StopIteration
                try:
                    return next(self._pieces)
                except StopIteration as end:
                    if isinstance(end.value, ChatResult):
                        self.result = end.value
                    raise StopIteration from None
        finally:
            # close() from another thread while next() ran could not close the pieces itself.
            # close() sets the flag before it tries the lock, so one of the two always closes.
            if self._closed:
                self._close_pieces()

    def close(self) -> None:
        """Stop generating; ``result`` stays ``None`` unless the stream had already finished.

        Safe to call more than once and from any thread; never waits for a token.
        """
        self._closed = True
        self._close_pieces()

    def _close_pieces(self) -> None:
        if not self._busy.acquire(blocking=False):
            return  # next() is running in another thread: it closes the pieces as it returns
        try:
            close = getattr(self._pieces, "close", None)
            if close is not None:
                close()
        finally:
            self._busy.release()

    def __enter__(self) -> ChatStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _FirstTokenClock:
    """A ``generate`` streamer that only notes when the first new token came out.

    transformers hands a streamer the prompt first, then every new token as it is chosen; the
    second ``put`` is therefore the end of the prefill.
    """

    def __init__(self) -> None:
        self._puts = 0
        self.first_token_at: float | None = None

    def put(self, value: Any) -> None:
        self._puts += 1
        if self._puts == 2:
            self.first_token_at = time.perf_counter()

    def end(self) -> None:
        pass


def _validate_messages(messages: list[dict[str, str]]) -> None:
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts")
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or not isinstance(msg.get("role"), str) or not isinstance(msg.get("content"), str):
            raise ValueError(f"messages[{i}] must be a dict with string 'role' and 'content', got {msg!r}")


def _find_stop(text: str, stop: list[str]) -> int | None:
    """Index of the earliest stop string in ``text``, or ``None``."""
    hits = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return min(hits) if hits else None


def _stop_list(stop: list[str] | None) -> list[str]:
    """The stop strings that can match: an empty string is ignored (it would match everywhere)."""
    return [s for s in stop or [] if s]


def _drop_partial_char(text: str) -> str:
    """``text`` without the U+FFFD a reply cut by ``max_tokens`` ends with when its last token
    stopped inside a multi-byte UTF-8 character (the token that completes it never came)."""
    return text.rstrip("\ufffd")


def _stop_text_criteria(tokenizer: Any, stop: list[str] | None, start: int) -> list[Any]:
    """A transformers stopping criterion that ends a row once its decoded reply contains a stop
    string, or ``[]`` without (non-empty) stop strings.

    The same text match as the ONNX Runtime backend (and as the cut in ``_result``), rather than
    transformers' ``stop_strings``: those are mapped to token sequences up front, which fails
    with a ValueError for strings its byte-level vocabulary walk cannot place (emoji, most
    non-ASCII text), so a request that ORT serves would be refused.

    Parameters
    ----------
    tokenizer
        Decodes the generated ids.
    stop
        Stop strings; empty ones are ignored.
    start
        Column where the generated tokens begin (the prompt width, padding included).
    """
    stops = _stop_list(stop)
    if not stops:
        return []
    import torch
    from transformers import StoppingCriteria

    class _StopText(StoppingCriteria):
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
            # The whole reply is decoded each step: a stop string may span tokens, and a
            # multi-byte character only decodes once its last token is there.
            done = [
                _find_stop(tokenizer.decode(row[start:].tolist(), **_DECODE_KWARGS), stops) is not None
                for row in input_ids
            ]
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    return [_StopText()]


class Generator:
    """A loaded chat model with a lock that allows one generation at a time.

    Use :meth:`load` (or :func:`get_generator`) rather than the constructor.

    Parameters
    ----------
    model
        A transformers causal LM in eval mode.
    tokenizer
        Its tokenizer, with a chat template and ``<|im_end|>``.
    path
        Folder the model was loaded from (for logs and error messages).
    """

    #: The runtime that generates (``/healthz`` reports it): transformers on torch here.
    backend = "transformers"

    def __init__(self, model: Any, tokenizer: Any, path: Path | None = None) -> None:
        #: The folder's serving format (float32, int8-weight-only, ort-int4...), set by :meth:`load`
        #: from the folder's manifest once, so ``/healthz`` reads no file.
        self.format: str | None = None
        self.model = model
        self.tokenizer = tokenizer
        self.path = path
        self._lock = threading.Lock()
        eos = tokenizer.convert_tokens_to_ids(IM_END)
        if eos is None or eos == getattr(tokenizer, "unk_token_id", None):
            raise ValueError(f"tokenizer at {path} has no {IM_END} token: not a ChatML model")
        # <|im_end|> closes every ChatML turn: it is both where the reply ends and a safe pad.
        self.eos_token_id: int = int(eos)

    # ------------------------------------------------------------------ loading

    @classmethod
    def load(cls, path: Path | str, threads: int = 0) -> Generator:
        """Load a prepared generator folder on CPU: float32, int8 when the folder is quantized, or
        ONNX Runtime GenAI or OpenVINO GenAI when it was exported to one (:mod:`atalaia.models.exports`).

        Parameters
        ----------
        path
            Folder with ``config.json``, safetensors and tokenizer files (normally
            ``settings.generator_path``), or a weight-only int8 folder written by
            ``retrain.quantize.quantize_model`` (see :mod:`atalaia.models.quantized`).
        threads
            torch intra-op threads; 0 keeps torch's default. This is process-wide in torch.

        Returns
        -------
        Generator

        Raises
        ------
        GeneratorNotPreparedError
            When the folder or its ``config.json`` is missing.
        """
        path = Path(path).expanduser()
        if not (path / "config.json").is_file():
            raise GeneratorNotPreparedError(
                f"generator model not found at {path}. Fix: run `atalaia models prepare` "
                f"(or set ATALAIA_HOME / ATALAIA_GENERATOR_MODEL to where it was prepared)."
            )
        from atalaia.models.ortgenai import is_ort_dir
        from atalaia.models.ovgenai import is_ov_dir
        from atalaia.models.serving_choice import folder_format

        exported: Generator | None = None
        if is_ort_dir(path):
            # An ONNX Runtime GenAI version (atalaia.models.ortgenai): same interface.
            from atalaia.models.ortgenai import OrtGenerator

            exported = OrtGenerator.load_ort(path, threads=threads)
        elif is_ov_dir(path):
            # An OpenVINO GenAI version (atalaia.models.ovgenai): same interface.
            from atalaia.models.ovgenai import OvGenerator

            exported = OvGenerator.load_ov(path, threads=threads)
        if exported is not None:
            exported.format = folder_format(path)
            return exported
        from atalaia.models.prepare import _quiet_transformers_bars, require_module

        require_module("torch", "torch", "run the generator")
        require_module("transformers", "transformers", "run the generator")
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from atalaia.models.quantized import is_quantized_dir, load_quantized_model

        if threads > 0:
            torch.set_num_threads(threads)
        t0 = time.perf_counter()
        with _quiet_transformers_bars():  # a tqdm bar per load is noise in service logs
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            if is_quantized_dir(path):
                # A folder written by retrain.quantize: int8 weights, served like any version.
                model = load_quantized_model(path)
            else:
                model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, local_files_only=True)
        model.eval()
        logger.info(
            "generator loaded from %s in %.2f s (%d torch threads)",
            path,
            time.perf_counter() - t0,
            torch.get_num_threads(),
        )
        generator = cls(model, tokenizer, path)
        generator.format = folder_format(path)
        return generator

    @classmethod
    def from_settings(cls, settings: Settings) -> Generator:
        """Load ``settings.generator_path`` with ``settings.torch_threads``.

        Parameters
        ----------
        settings
            Atalaia settings.

        Returns
        -------
        Generator
        """
        return cls.load(settings.generator_path, threads=settings.torch_threads)

    # ------------------------------------------------------------------ prompt helpers

    @property
    def context_length(self) -> int:
        """Largest number of tokens (prompt + completion) the model accepts."""
        return int(self.model.config.max_position_embeddings)

    def _encode(self, messages: list[dict[str, str]]) -> dict[str, torch.Tensor]:
        _validate_messages(messages)
        enc = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
        )
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def count_prompt_tokens(self, messages: list[dict[str, str]]) -> int:
        """Number of tokens of the templated prompt (with the assistant header).

        Parameters
        ----------
        messages
            Chat messages, ``[{"role": "user", "content": "..."}]``.

        Returns
        -------
        int
        """
        _validate_messages(messages)
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
        return len(ids["input_ids"])

    def _check(self, prompt_tokens: int, max_tokens: int, temperature: float, top_p: float) -> None:
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        if prompt_tokens + max_tokens > self.context_length:
            raise PromptTooLongError(prompt_tokens, max_tokens, self.context_length)

    def _generation_config(self, max_tokens: int, temperature: float, top_p: float) -> Any:
        from transformers import GenerationConfig

        sample = temperature > 0
        kwargs: dict[str, Any] = {
            "max_new_tokens": max_tokens,
            "do_sample": sample,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.eos_token_id,
        }
        if sample:
            # Only set sampling knobs when sampling: transformers warns about them otherwise.
            kwargs.update(temperature=temperature, top_p=top_p)
        # Stop strings are a stopping criterion (_stop_text_criteria), not stop_strings here.
        return GenerationConfig(**kwargs)

    def _result(
        self,
        output_ids: torch.Tensor,
        prompt_len: int,
        max_tokens: int,
        stop: list[str] | None,
        first_token_at: float | None = None,
    ) -> ChatResult:
        new = output_ids[0, prompt_len:].tolist()
        hit_eos = self.eos_token_id in new
        if hit_eos:
            new = new[: new.index(self.eos_token_id) + 1]
        text = self.tokenizer.decode(new, **_DECODE_KWARGS)
        stops = _stop_list(stop)
        cut = _find_stop(text, stops) if stops else None
        if cut is not None:
            text = text[:cut]
            # Count up to the token that completed the stop string: in a batch, a row that
            # stopped early was padded with <|im_end|> while the others went on, and that
            # padding is no work of this row's. Alone, this is one extra decode.
            while len(new) > 1 and _find_stop(self.tokenizer.decode(new[:-1], **_DECODE_KWARGS), stops) is not None:
                new = new[:-1]
        completion_tokens = len(new)
        finish: FinishReason = "length" if (cut is None and not hit_eos and completion_tokens >= max_tokens) else "stop"
        if finish == "length":
            # Only a length cut can split a character; usage still counts every token.
            text = _drop_partial_char(text)
        return ChatResult(
            text=text,
            prompt_tokens=prompt_len,
            completion_tokens=completion_tokens,
            finish_reason=finish,
            first_token_at=first_token_at,
        )

    # ------------------------------------------------------------------ generation

    def chat(
        self,
        messages: list[dict[str, str]],
        max_tokens: int = 128,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: list[str] | None = None,
    ) -> ChatResult:
        """Complete a chat: greedy when ``temperature == 0``, else nucleus sampling.

        Parameters
        ----------
        messages
            Chat messages, ``[{"role": "system"|"user"|"assistant", "content": "..."}]``.
        max_tokens
            Most tokens to generate.
        temperature
            0 for greedy (deterministic) decoding.
        top_p
            Nucleus sampling mass, used only when sampling.
        stop
            Strings that end the reply; the text is cut before the first one.

        Returns
        -------
        ChatResult

        Raises
        ------
        ValueError
            Bad messages or parameters.
        PromptTooLongError
            Prompt tokens plus ``max_tokens`` exceed :attr:`context_length`.
        """
        import torch
        from transformers import StoppingCriteriaList

        inputs = self._encode(messages)
        prompt_len = int(inputs["input_ids"].shape[1])
        self._check(prompt_len, max_tokens, temperature, top_p)
        config = self._generation_config(max_tokens, temperature, top_p)
        criteria = StoppingCriteriaList(_stop_text_criteria(self.tokenizer, stop, prompt_len))
        clock = _FirstTokenClock()
        with self._lock, torch.inference_mode():
            out = self.model.generate(
                **inputs,
                generation_config=config,
                tokenizer=self.tokenizer,
                streamer=clock,
                stopping_criteria=criteria,
            )
        return self._result(out, prompt_len, max_tokens, stop, clock.first_token_at)

    #: Whether :meth:`chat_batch` really batches (one ``generate`` over padded prompts) on this backend.
    batches = True
    #: Whether a batch is padded to its longest prompt (so that large batches of unequal prompts
    #: waste work; ``ATALAIA_EVAL_BATCH_SIZE`` sizes them) or runs unpadded (continuous batching).
    pads_batches = True

    def chat_batch(
        self,
        conversations: list[list[dict[str, str]]],
        max_tokens: int = 128,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: list[str] | None = None,
    ) -> list[ChatResult]:
        """Complete several chats in one batched ``generate`` call (offline work: the gate's holdout).

        Prompts are left-padded with ``<|im_end|>`` under an attention mask, so each row decodes
        as it would alone up to float rounding (greedy answers may differ in rare near-ties).
        Decoding a batch costs little more per step than decoding one row on a CPU, where a
        single row leaves the matrix kernels memory-bound; the prefill costs the same per token.
        ``first_token_at`` is not measured (``None``).

        Parameters
        ----------
        conversations
            One message list per chat.
        max_tokens, temperature, top_p, stop
            As for :meth:`chat`, shared by every row.

        Returns
        -------
        list of ChatResult
            In the order of ``conversations``.
        """
        import torch
        from transformers import StoppingCriteriaList

        if not conversations:
            return []
        encoded = [self._encode(m)["input_ids"][0] for m in conversations]
        for ids in encoded:
            self._check(int(ids.shape[0]), max_tokens, temperature, top_p)
        width = max(int(ids.shape[0]) for ids in encoded)
        input_ids = torch.full((len(encoded), width), self.eos_token_id, dtype=torch.long)
        mask = torch.zeros((len(encoded), width), dtype=torch.long)
        for row, ids in enumerate(encoded):
            input_ids[row, width - ids.shape[0] :] = ids
            mask[row, width - ids.shape[0] :] = 1
        config = self._generation_config(max_tokens, temperature, top_p)
        # Left padding: every row's generated tokens start at column `width`.
        criteria = StoppingCriteriaList(_stop_text_criteria(self.tokenizer, stop, width))
        with self._lock, torch.inference_mode():
            out = self.model.generate(
                input_ids=input_ids,
                attention_mask=mask,
                generation_config=config,
                tokenizer=self.tokenizer,
                stopping_criteria=criteria,
            )
        results = []
        for row, ids in enumerate(encoded):
            # This row without its left padding: the prompt, then what it generated (right-padded
            # with <|im_end|> after it finished, which _result cuts at the first <|im_end|>).
            own = out[row : row + 1, width - ids.shape[0] :]
            results.append(self._result(own, int(ids.shape[0]), max_tokens, stop))
        return results

    def chat_stream(
        self,
        messages: list[dict[str, str]],
        max_tokens: int = 128,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: list[str] | None = None,
    ) -> ChatStream:
        """Like :meth:`chat`, but yield the reply in pieces as it is generated.

        Arguments are checked now (so a bad request fails before any streaming starts);
        generation starts on the first ``next()``. The pieces join to exactly ``result.text``;
        with ``stop`` a little text is held back until it cannot be the start of a stop string.

        Parameters
        ----------
        messages, max_tokens, temperature, top_p, stop
            As for :meth:`chat`.

        Returns
        -------
        ChatStream
            Iterate it for ``str`` pieces; afterwards ``stream.result`` is the :class:`ChatResult`.

        Raises
        ------
        ValueError
            Bad messages or parameters.
        PromptTooLongError
            Prompt tokens plus ``max_tokens`` exceed :attr:`context_length`.
        """
        inputs = self._encode(messages)
        prompt_len = int(inputs["input_ids"].shape[1])
        self._check(prompt_len, max_tokens, temperature, top_p)
        config = self._generation_config(max_tokens, temperature, top_p)
        return ChatStream(self._stream_pieces(inputs, prompt_len, config, max_tokens, stop))

    def _stream_pieces(
        self,
        inputs: dict[str, torch.Tensor],
        prompt_len: int,
        config: Any,
        max_tokens: int,
        stop: list[str] | None,
    ) -> PyGenerator[str, None, ChatResult]:
        """The pieces of :meth:`chat_stream`; returns the :class:`ChatResult` (no reference to
        the :class:`ChatStream`, so dropping the stream closes this generator at once)."""
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        stops = _stop_list(stop)
        cancel = threading.Event()

        class _Cancelled(StoppingCriteria):
            # Lets a consumer that goes away (client disconnect) stop generation at once.
            def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
                return torch.full((input_ids.shape[0],), cancel.is_set(), dtype=torch.bool, device=input_ids.device)

        class _TimedStreamer(TextIteratorStreamer):
            # Notes the end of the prefill: the first put after the (skipped) prompt.
            first_token_at: float | None = None

            def put(self, value: torch.Tensor) -> None:
                if self.first_token_at is None and not self.next_tokens_are_prompt:
                    self.first_token_at = time.perf_counter()
                super().put(value)

        streamer = _TimedStreamer(self.tokenizer, skip_prompt=True, **_DECODE_KWARGS)
        outcome: dict[str, Any] = {}

        def work() -> None:
            try:
                # inference_mode is thread-local: it must be entered in the generating thread.
                with torch.inference_mode():
                    outcome["ids"] = self.model.generate(
                        **inputs,
                        generation_config=config,
                        tokenizer=self.tokenizer,
                        streamer=streamer,
                        stopping_criteria=StoppingCriteriaList(
                            [_Cancelled(), *_stop_text_criteria(self.tokenizer, stops, prompt_len)]
                        ),
                    )
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer thread
                outcome["error"] = exc
                streamer.end()  # unblock the consumer, which re-raises
            finally:
                # Released here, not by the consumer: generation may outlive an abandoned stream.
                self._lock.release()

        self._lock.acquire()
        try:
            worker = threading.Thread(target=work, name="atalaia-generate", daemon=True)
            worker.start()
        except BaseException:
            self._lock.release()
            raise

        # Longest text that could be the beginning of a stop string: held back until resolved.
        hold = max((len(s) for s in stops), default=1) - 1
        received = ""
        sent = 0
        try:
            for piece in streamer:
                received += piece
                cut = _find_stop(received, stops) if stops else None
                if cut is not None:
                    if cut > sent:
                        yield received[sent:cut]
                        sent = cut
                    cancel.set()
                    break
                # A trailing U+FFFD is a character whose last token has not come yet (or never
                # will, at a length cut): never emit text that may still change.
                safe = len(received.rstrip("\ufffd")) - hold
                if safe > sent:
                    chunk, sent = received[sent:safe], safe
                    yield chunk
            worker.join()
            if "error" in outcome:
                raise RuntimeError(f"generation failed: {outcome['error']}") from outcome["error"]
            result = self._result(outcome["ids"], prompt_len, max_tokens, stops, streamer.first_token_at)
            # The streamer decodes line by line; the result decodes all tokens at once. Emit
            # whatever the streamed text lacks (held-back text, final flush) so pieces == text.
            emitted = received[:sent]
            if result.text.startswith(emitted):
                if len(result.text) > len(emitted):
                    yield result.text[len(emitted) :]
            else:
                logger.warning("streamed text diverged from the decoded reply: %r vs %r", emitted, result.text)
            return result
        finally:
            cancel.set()


_GENERATORS: dict[str, Generator] = {}
_GENERATORS_LOCK = threading.Lock()


def get_generator(settings: Settings | None = None) -> Generator:
    """The process-wide :class:`Generator` for ``settings.generator_path``, loaded once.

    Parameters
    ----------
    settings
        Atalaia settings; ``None`` uses :func:`atalaia.settings.get_settings`.

    Returns
    -------
    Generator
    """
    if settings is None:
        from atalaia.settings import get_settings

        settings = get_settings()
    key = str(Path(settings.generator_path).resolve())
    with _GENERATORS_LOCK:
        gen = _GENERATORS.get(key)
        if gen is None:
            gen = Generator.from_settings(settings)
            _GENERATORS[key] = gen
        return gen
