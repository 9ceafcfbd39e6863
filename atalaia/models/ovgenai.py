"""A generation backend on OpenVINO GenAI (int8/int4/fp32 OpenVINO IR on CPU).

An OpenVINO folder is exported offline from a float32 model folder (:func:`export_ov`, which
runs :mod:`atalaia.models.ov_convert` in a subprocess) and holds

- ``openvino_model.xml`` + ``openvino_model.bin``: the stateful IR with compressed weights;
- ``config.json``, the tokenizer files and the chat template of the source folder;
- ``atalaia-ov.json``: precision, versions, source and size, written last (marks a complete folder).

:class:`OvGenerator` serves such a folder with ``openvino_genai.LLMPipeline`` behind the
interface of :class:`atalaia.models.generator.Generator`; ``Generator.load`` dispatches to it
when the folder has the manifest. As for ONNX Runtime GenAI, the Hugging Face tokenizer makes and
decodes the ids (OpenVINO's tokenizer conversion fails on this tokenizer's detokenizer), so every
backend sees the same prompt tokens.

Examples
--------
>>> export_ov(settings.generator_path, out_dir, precision="int8")      # doctest: +SKIP
>>> Generator.load(out_dir).chat([{"role": "user", "content": "Hi"}]).text  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import math
import os
import queue
import random
import sys
import threading
import time
from collections.abc import Generator as PyGenerator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from atalaia.models.export_staging import finish_export, run_exporter, staging_folder
from atalaia.models.generator import ChatResult
from atalaia.models.manifest import read_format_manifest
from atalaia.models.ov_convert import IR_NAME, PRECISIONS
from atalaia.models.token_loop import TokenLoopGenerator

logger = logging.getLogger(__name__)

OV_MANIFEST = "atalaia-ov.json"
OV_FORMAT = 1
#: Compile properties: float32 activations. The CPU plugin's default on hosts with AVX512-BF16
#: or AMX is bf16, measured slower to decode and further from float32's perplexity here.
_PRECISION_HINT = "f32"


class OvExportError(RuntimeError):
    """The OpenVINO export failed; the message carries the end of its output."""


def quantization_label(precision: str) -> str:
    """The ``model_versions.quantization`` value of an OpenVINO folder, e.g. ``'ov-int8'``."""
    return f"ov-{precision}"


def is_ov_dir(path: Path | str) -> bool:
    """Whether ``path`` holds a complete OpenVINO folder written by :func:`export_ov`."""
    return (Path(path) / OV_MANIFEST).is_file()


def read_ov_manifest(path: Path | str) -> dict[str, Any]:
    """The ``atalaia-ov.json`` of an OpenVINO folder.

    Raises
    ------
    ValueError
        When it is unreadable, of another format version or of an unknown precision.
    """
    return read_format_manifest(Path(path) / OV_MANIFEST, OV_FORMAT, "precision", PRECISIONS, "OpenVINO")


def export_ov(
    src_dir: Path | str, out_dir: Path | str, *, precision: str = "int8", timeout_s: float = 1800.0
) -> dict[str, Any]:
    """Export a float32 model folder to an OpenVINO GenAI folder, offline.

    The conversion runs in a subprocess (tracing holds about 1 GB), into a temporary sibling
    folder renamed to ``out_dir`` only when complete.

    Parameters
    ----------
    src_dir
        A float32 safetensors folder (the prepared base model or a merged candidate).
    out_dir
        Destination; replaced if it exists.
    precision
        ``int8`` (default), ``int4`` or ``fp32``.
    timeout_s
        Give up after this many seconds.

    Returns
    -------
    dict
        The manifest written (precision, versions, seconds, size in bytes).

    Raises
    ------
    ValueError
        Unknown precision.
    OvExportError
        The conversion failed or timed out.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    from atalaia.models.prepare import require_module

    require_module("openvino_genai", "openvino-genai", "export the OpenVINO GenAI model")
    require_module("nncf", "nncf", "compress the OpenVINO GenAI model's weights")
    import openvino as ov

    src, out = Path(src_dir), Path(out_dir)
    with staging_folder(src, out, "ov", OvExportError) as tmp:
        logger.info("exporting %s to OpenVINO %s (about half a minute)", src, precision)
        t0 = time.perf_counter()
        cmd = [sys.executable, "-m", "atalaia.models.ov_convert", str(src), str(tmp), precision]
        env = os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        what = f"OpenVINO export of {src}"
        run_exporter(cmd, produced=tmp / IR_NAME, error=OvExportError, what=what, timeout_s=timeout_s, env=env)
        manifest = {
            "format": OV_FORMAT,
            "precision": precision,
            "openvino_version": ov.get_version(),
            "export_s": round(time.perf_counter() - t0, 2),
        }
        manifest = finish_export(src, tmp, OV_MANIFEST, manifest)
    logger.info("exported %s to OpenVINO %s at %s in %.1f s", src, precision, out, manifest["export_s"])
    return manifest


def _properties(threads: int) -> dict[str, Any]:
    props: dict[str, Any] = {"INFERENCE_PRECISION_HINT": _PRECISION_HINT}
    if threads > 0:
        props["INFERENCE_NUM_THREADS"] = threads
    return props


class _OvLogits:
    """Full-sequence logits of the folder's IR, shaped like a transformers forward pass.

    Lets code written for ``generator.model(input_ids=...).logits`` (the perplexity metric)
    score an OpenVINO version too. The IR is compiled on first use: serving alone never pays for
    this second copy. :meth:`token_logprobs` is the fast path for long prompts (holdout
    perplexity in ``retrain.evaluate``), on the continuous-batching pipeline that also answers
    :meth:`OvGenerator.chat_batch` (:meth:`batch_pipeline`).
    """

    def __init__(self, path: Path, properties: dict[str, Any], context_length: int) -> None:
        self.path = path
        self.properties = properties
        self.config = SimpleNamespace(max_position_embeddings=context_length)
        self._request: Any = None
        self._scorer: Any = None
        self._lock = threading.Lock()

    def batch_pipeline(self) -> Any:
        """The continuous-batching pipeline for offline work (the gate's answers and scores),
        created on first use, with its prefix cache on: scoring a reference answer after the
        same prompt was answered reuses the prompt's KV blocks instead of computing them again.
        Serving keeps its own pipeline, without the cache (see :meth:`OvGenerator.load_ov`)."""
        import openvino_genai

        if self._scorer is None:
            scheduler = openvino_genai.SchedulerConfig()
            scheduler.enable_prefix_caching = True
            self._scorer = openvino_genai.ContinuousBatchingPipeline(str(self.path), scheduler, "CPU", self.properties)
        return self._scorer

    def token_logprobs(self, ids: list[int]) -> list[float]:
        """``log p(ids[j] | ids[:j])`` for ``j = 1 .. len(ids) - 1``; NaN where not computed.

        Read from the continuous-batching pipeline with ``echo`` (it returns the prompt's token
        log-probabilities), which runs the prompt through PagedAttention: a 700-token RAG prompt
        takes about 0.8-1.5 s at one thread, where the plain compiled IR takes 3.5 s (its
        attention over a long query falls back to a slow kernel; BENCHMARKS.md). Positions whose
        KV blocks came from the prefix cache are not computed again and have no log-probability:
        they are NaN here (the front of the list; the entries are aligned from the end).
        """
        import numpy as np
        import openvino as ov
        import openvino_genai

        with self._lock:
            pipeline = self.batch_pipeline()
            config = openvino_genai.GenerationConfig()
            config.max_new_tokens, config.echo, config.logprobs, config.do_sample = 1, True, 1, False
            handle = pipeline.add_request(0, ov.Tensor(np.asarray([ids], dtype=np.int64)), config)
            while pipeline.has_non_finished_requests():
                pipeline.step()
            out = handle.read_all()[0]
        # The last entry is the generated token's; before it, one per computed prompt position
        # up to the last prompt token (the very first token never has a log-probability).
        if len(ids) < 2:
            return []
        computed = [float(v) for v in list(out.generated_log_probs)[:-1]][-(len(ids) - 1) :]
        return [math.nan] * (len(ids) - 1 - len(computed)) + computed

    def __call__(self, input_ids: Any, **_: Any) -> SimpleNamespace:
        import numpy as np
        import openvino as ov
        import torch

        with self._lock:
            if self._request is None:
                compiled = ov.Core().compile_model(str(self.path / IR_NAME), "CPU", self.properties)
                self._request = compiled.create_infer_request()
            ids = input_ids.numpy().astype(np.int64)
            self._request.reset_state()
            self._request.infer(
                {
                    "input_ids": ids,
                    "attention_mask": np.ones_like(ids),
                    "position_ids": np.broadcast_to(np.arange(ids.shape[1], dtype=np.int64), ids.shape),
                    "beam_idx": np.arange(ids.shape[0], dtype=np.int32),
                }
            )
            logits = np.array(self._request.get_tensor("logits").data, dtype=np.float32)
        return SimpleNamespace(logits=torch.from_numpy(logits))

    def eval(self) -> _OvLogits:
        return self


class OvGenerator(TokenLoopGenerator):
    """A :class:`Generator` whose model runs on OpenVINO GenAI's ``LLMPipeline``.

    ``self.model`` is a logits shim (see :class:`_OvLogits`). Use ``Generator.load`` on an
    OpenVINO folder rather than the constructor.
    """

    backend = "openvino-genai"

    def __init__(
        self, pipe: Any, tokenizer: Any, path: Path, context_length: int, precision: str, threads: int
    ) -> None:
        super().__init__(_OvLogits(path, _properties(threads), context_length), tokenizer, path)
        self._pipe = pipe
        #: Held by whichever thread runs the serving pipeline. A closed stream's generation ends at
        #: its next token while the model's lock (``_lock``) is already free: the next request's
        #: generation waits here, in its own thread, rather than ``close()`` waiting (the server
        #: closes streams on its event loop).
        self._pipe_lock = threading.Lock()
        self._context_length = context_length
        self.precision = precision

    @classmethod
    def load_ov(cls, path: Path | str, threads: int = 0) -> OvGenerator:
        """Load an OpenVINO folder written by :func:`export_ov`.

        Parameters
        ----------
        path
            The folder.
        threads
            OpenVINO inference threads for this model; 0 lets OpenVINO choose (all cores).

        Returns
        -------
        OvGenerator
        """
        from atalaia.models.prepare import _quiet_transformers_bars, require_module

        require_module("openvino_genai", "openvino-genai", "serve an OpenVINO GenAI model version")
        import openvino_genai
        from transformers import AutoTokenizer

        path = Path(path).expanduser()
        manifest = read_ov_manifest(path)
        t0 = time.perf_counter()
        scheduler = openvino_genai.SchedulerConfig()
        # On by default in LLMPipeline: a prompt seen before skips most of its prefill. Off, every
        # request pays its own prefill as on the other backends, so the speed probe, the gate's
        # latencies and served TTFTs compare like with like (BENCHMARKS.md measured it on: a
        # repeated 271-token prompt's TTFT fell from 0.9 s to 0.06 s).
        scheduler.enable_prefix_caching = False
        pipe = openvino_genai.LLMPipeline(str(path), "CPU", scheduler_config=scheduler, **_properties(threads))
        with _quiet_transformers_bars():
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        logger.info(
            "OpenVINO GenAI %s generator loaded from %s in %.2f s (%s threads)",
            manifest["precision"],
            path,
            time.perf_counter() - t0,
            threads or "default",
        )
        return cls(pipe, tokenizer, path, int(config["max_position_embeddings"]), str(manifest["precision"]), threads)

    @property
    def context_length(self) -> int:
        """Largest number of tokens (prompt + completion) the model accepts."""
        return self._context_length

    def _config(self, max_tokens: int, temperature: float, top_p: float) -> Any:
        config = self._pipe.get_generation_config()
        config.max_new_tokens = max_tokens
        config.eos_token_id = self.eos_token_id
        config.stop_token_ids = {self.eos_token_id}
        config.do_sample = temperature > 0
        if temperature > 0:
            # top_k 50 is also transformers' default, so the backends sample the same way; the
            # pipeline's seed is fixed (0) unless set, which would repeat every sampled answer.
            config.temperature, config.top_p, config.top_k = temperature, top_p, 50
            config.rng_seed = random.getrandbits(31)
        return config

    def _run(self, ids: list[int], config: Any, on_token: Any) -> list[int]:
        """``LLMPipeline.generate`` on ``ids``; ``on_token(id) -> bool`` is called per streamed
        token and returns whether to go on. Returns every token the pipeline produced."""
        import numpy as np
        import openvino as ov
        import openvino_genai

        class _Streamer(openvino_genai.StreamerBase):  # type: ignore[misc]
            def write(self, token: Any) -> Any:
                go_on = True
                for t in token if isinstance(token, list) else [token]:
                    go_on = on_token(int(t)) and go_on
                return openvino_genai.StreamingStatus.RUNNING if go_on else openvino_genai.StreamingStatus.CANCEL

            def end(self) -> None:
                pass

        arr = np.asarray([ids], dtype=np.int64)
        inputs = openvino_genai.TokenizedInputs(ov.Tensor(arr), ov.Tensor(np.ones_like(arr)))
        with self._pipe_lock:
            out = self._pipe.generate(inputs, config, _Streamer())
        return [int(t) for t in out.tokens[0]]

    def _tokens(
        self, ids: list[int], max_tokens: int, temperature: float, top_p: float, cancel: threading.Event
    ) -> PyGenerator[int, None, None]:
        """Generated ids as the pipeline streams them (it runs in a thread of its own).

        The pipeline does not stream the ``<|im_end|>`` that ends a reply; it is yielded from
        the pipeline's result, as the other backends yield it. Closing this iterator cancels the
        pipeline at its next token without waiting for it (see ``_pipe_lock``).
        """
        config = self._config(max_tokens, temperature, top_p)
        tokens: queue.SimpleQueue[Any] = queue.SimpleQueue()
        done = object()

        def on_token(token: int) -> bool:
            if cancel.is_set():
                return False
            tokens.put(token)
            return True

        def run() -> None:
            try:
                produced = self._run(ids, config, on_token)
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer's thread
                tokens.put(exc)
            else:
                if produced and produced[-1] == self.eos_token_id and not cancel.is_set():
                    tokens.put(self.eos_token_id)
            tokens.put(done)

        worker = threading.Thread(target=run, name="ov-generate", daemon=True)
        worker.start()
        produced_count = 0
        try:
            while True:
                item = tokens.get()
                if item is done:
                    return
                if isinstance(item, BaseException):
                    raise item
                produced_count += 1
                yield item
                if item == self.eos_token_id or produced_count >= max_tokens:
                    return
        finally:
            cancel.set()

    #: :meth:`chat_batch` runs the chats together on the continuous-batching pipeline, unpadded.
    batches = True
    pads_batches = False

    def chat_batch(
        self,
        conversations: list[list[dict[str, str]]],
        max_tokens: int = 128,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: list[str] | None = None,
    ) -> list[ChatResult]:
        """As :meth:`Generator.chat_batch`: every chat at once on the continuous-batching
        pipeline (:meth:`_OvLogits.batch_pipeline`), each prompt unpadded; stop strings cut each
        reply afterwards, as a batched transformers reply is cut."""
        import numpy as np
        import openvino as ov

        if not conversations:
            return []
        prompts = [self._prompt_ids(m) for m in conversations]
        for ids in prompts:
            self._check(len(ids), max_tokens, temperature, top_p)
        configs = [self._config(max_tokens, temperature, top_p) for _ in prompts]
        with self._lock, self.model._lock:
            pipeline = self.model.batch_pipeline()
            outputs = pipeline.generate([ov.Tensor(np.asarray([ids], dtype=np.int64)) for ids in prompts], configs)
        results = []
        for ids, out in zip(prompts, outputs, strict=True):
            new = [int(t) for t in list(out.m_generation_ids[0])]
            results.append(self._finish(ids, new, max_tokens, stop, None))
        return results

    def speed_sample(self, input_ids: Any, decode_tokens: int) -> Any:
        """One run of the speed probe (:mod:`atalaia.models.speed`) on OpenVINO GenAI.

        The first streamed token marks the end of the prefill; ``min_new_tokens`` and
        ``ignore_eos`` keep ``<|im_end|>`` from ending the timed decode steps early.

        Returns
        -------
        atalaia.models.speed.SpeedSample
        """
        from atalaia.models.speed import SpeedSample

        if decode_tokens < 1:
            raise ValueError("decode_tokens must be at least 1")
        ids = [int(i) for i in input_ids[0].tolist()]
        config = self._config(decode_tokens + 1, 0.0, 1.0)
        config.min_new_tokens = decode_tokens + 1
        config.ignore_eos = True
        stamps: list[float] = []

        def on_token(_: int) -> bool:
            stamps.append(time.perf_counter())
            return True

        with self._lock:
            t0 = time.perf_counter()
            self._run(ids, config, on_token)
            t2 = time.perf_counter()
        t1 = stamps[0] if stamps else t2
        return SpeedSample(
            prompt_tokens=len(ids),
            prefill_ms=(t1 - t0) * 1000.0,
            decode_ms=(t2 - t1) * 1000.0,
            decode_tokens=max(len(stamps) - 1, 1),
        )
