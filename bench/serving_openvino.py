"""OpenVINO GenAI exports made by optimum-intel beside the project's serving formats, on the workload of
:mod:`bench.serving`.

Since this bench was written the project exports and serves OpenVINO itself
(:mod:`atalaia.models.ov_convert`, :mod:`atalaia.models.ovgenai`; ``ov-int8`` etc. in
``python -m bench.serving --formats``). This bench stays to compare those exports with
optimum-intel's (``--ov-dir`` holding an optimum export and the project's, e.g. ``int8opt/`` and
``int8own/`` as ``ov-int8opt-f32,ov-int8own-f32``); on the prepared SmolLM2 both int8 IRs gave the
same holdout perplexity (33.860) and speed within 2 % (BENCHMARKS.md).

Issue 17 chose ONNX Runtime GenAI as the second generation backend without measuring OpenVINO
GenAI, because its exporter (``optimum-intel``) pins an older transformers than the project's.
This bench measures OpenVINO exports of the prepared generator next to float32 transformers and
the project's ORT exports, in one run, with :func:`bench.serving.measure` (the same served RAG
requests, formats alternating request by request, TTFT p50/p95, prefill and decode tokens/s,
end-to-end request time, load time, RSS, size) and
:func:`retrain.evaluate.answer_perplexities` (holdout perplexity).

The project environment does not carry OpenVINO. Set it up outside the venv, changing nothing
in it (``uv`` from any environment will do)::

    # 1. the runtime, as a --target folder importable next to torch and onnxruntime_genai
    uv pip install --python .venv/bin/python --target /tmp/ovrt openvino-genai==2026.4.1.0
    rm -rf /tmp/ovrt/numpy*        # the venv's own numpy is used (the runtime only needs numpy)

    # 2. the exports, from a throw-away venv (optimum-intel 2.2 pins transformers<5.6)
    uv venv /tmp/ovexport --python 3.11
    uv pip install --python /tmp/ovexport/bin/python "optimum-intel[openvino]" nncf openvino-tokenizers
    export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
    M=.atalaia/models/smollm2-135m-instruct
    /tmp/ovexport/bin/optimum-cli export openvino --model $M --task text-generation-with-past \\
        --weight-format int4 --group-size 64 /tmp/ov-models/int4    # 576 channels: 128 fails
    # ... and --weight-format int8 / fp16 / fp32 into /tmp/ov-models/int8, fp16, fp32

The exporter cannot convert this tokenizer's detokenizer to OpenVINO IR, so there are no
``openvino_tokenizer.xml`` / ``openvino_detokenizer.xml``: as for ORT GenAI, the Hugging Face
tokenizer of the folder makes the ids (the project's chat template, through
:meth:`Generator._encode`, so every format sees the same tokens), ``LLMPipeline.generate`` takes
them as ``TokenizedInputs``, and a ``StreamerBase`` notes when the first new token comes out.

Formats ``ov-<weights>`` use the CPU plugin's default ``INFERENCE_PRECISION_HINT`` (bf16 on
hosts with AVX512-BF16 or AMX); ``ov-<weights>-f32`` force f32. LLMPipeline's default
backend (PagedAttention, continuous batching) is kept, with its prefix cache off unless
``--prefix-caching``: the other formats cannot reuse an earlier prompt's prefill. Perplexity runs the exported
stateful IR with ``openvino.Core().compile_model`` under the same properties.

    .venv/bin/python -m bench.serving_openvino [--formats float32,ort-int4,ov-int4,ov-int4-f32,...]
        [--threads 1,2] [--prompts 4] [--new-tokens 32] [--ppl-items 8] [--ov-dir /tmp/ov-models]
        [--ov-runtime /tmp/ovrt] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path, PosixPath
from types import SimpleNamespace
from typing import Any

from atalaia.models.generator import ChatResult, Generator
from atalaia.settings import get_settings
from bench.serving import _folder, measure, print_table

DEFAULT_FORMATS = "float32,ort-int4,ov-int4,ov-int4-f32,ov-int8,ov-int8-f32,ov-fp16,ov-fp16-f32,ov-fp32-f32"
#: LLMPipeline's prefix cache (its default: on); ``--prefix-caching`` turns it back on.
PREFIX_CACHING = False


class OvPath(PosixPath):
    """An OpenVINO export folder plus the precision hint to compile it with (``None``: default)."""

    hint: str | None = None


def _ov_folder(fmt: str, ov_dir: Path) -> OvPath:
    weights, _, hint = fmt.removeprefix("ov-").partition("-")
    path = OvPath(ov_dir / weights)
    if not (path / "openvino_model.xml").is_file():
        raise SystemExit(f"{fmt}: no OpenVINO export at {path} (see this module's docstring)")
    path.hint = hint or None
    return path


def _properties(threads: int, hint: str | None) -> dict[str, Any]:
    props: dict[str, Any] = {}
    if threads > 0:
        props["INFERENCE_NUM_THREADS"] = threads
    if hint:
        props["INFERENCE_PRECISION_HINT"] = hint
    return props


class _OvLogits:
    """Full-sequence logits of the exported stateful IR, shaped like a transformers forward pass.

    Lets :func:`retrain.evaluate.answer_perplexities` score an OpenVINO export as it scores the
    others (``model(input_ids=...).logits`` and ``model.config.max_position_embeddings``). The
    IR is compiled on first use, so that it does not count in the format's load time or RSS.
    """

    def __init__(self, path: Path, properties: dict[str, Any], config: Any) -> None:
        self.path = path
        self.properties = properties
        self.config = config
        self._request: Any = None
        self.compiled_properties: dict[str, str] = {}

    def __call__(self, input_ids: Any, **_: Any) -> SimpleNamespace:
        import numpy as np
        import openvino as ov
        import torch

        if self._request is None:
            compiled = ov.Core().compile_model(str(self.path / "openvino_model.xml"), "CPU", self.properties)
            for key in ("INFERENCE_PRECISION_HINT", "KV_CACHE_PRECISION", "INFERENCE_NUM_THREADS"):
                self.compiled_properties[key] = str(compiled.get_property(key))
            self._request = compiled.create_infer_request()
        ids = input_ids.numpy().astype(np.int64)
        self._request.reset_state()
        self._request.infer(
            {
                "input_ids": ids,
                "attention_mask": np.ones_like(ids),
                "position_ids": np.arange(ids.shape[1], dtype=np.int64)[None, :],
                "beam_idx": np.zeros(ids.shape[0], dtype=np.int32),
            }
        )
        logits = self._request.get_tensor("logits").data
        return SimpleNamespace(logits=torch.from_numpy(np.array(logits, dtype=np.float32)))

    def eval(self) -> _OvLogits:
        return self


class OvGenerator(Generator):
    """A :class:`Generator` served by ``openvino_genai.LLMPipeline`` (greedy ``chat`` only).

    ``self.model`` is a logits shim over the exported IR (see :class:`_OvLogits`).
    """

    backend = "openvino-genai"

    def __init__(self, pipe: Any, tokenizer: Any, path: Path, logits: _OvLogits) -> None:
        super().__init__(logits, tokenizer, path)
        self.pipe = pipe

    @classmethod
    def load_ov(cls, path: OvPath, threads: int = 0) -> OvGenerator:
        """Build the pipeline on CPU with ``INFERENCE_NUM_THREADS=threads`` and the folder's hint."""
        import openvino_genai
        from transformers import AutoConfig, AutoTokenizer

        props = _properties(threads, path.hint)
        scheduler = openvino_genai.SchedulerConfig()
        # LLMPipeline turns prefix caching on by default: a repeated prompt (the warm-up's) would
        # skip its prefill, which no other format can do. Off, every request pays its prefill.
        scheduler.enable_prefix_caching = PREFIX_CACHING
        pipe = openvino_genai.LLMPipeline(str(path), "CPU", scheduler_config=scheduler, **props)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        config = AutoConfig.from_pretrained(path, local_files_only=True)
        return cls(pipe, tokenizer, Path(path), _OvLogits(Path(path), props, config))

    def chat(
        self,
        messages: list[dict[str, str]],
        max_tokens: int = 128,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: list[str] | None = None,
    ) -> ChatResult:
        """Greedy completion of ``messages`` with the same prompt ids as the other formats."""
        import openvino as ov
        import openvino_genai
        import torch

        if temperature > 0 or stop:
            raise NotImplementedError("the OpenVINO bench generator decodes greedily without stop strings")
        inputs = self._encode(messages)
        prompt_len = int(inputs["input_ids"].shape[1])
        self._check(prompt_len, max_tokens, temperature, top_p)
        config = self.pipe.get_generation_config()
        config.max_new_tokens = max_tokens
        config.do_sample = False
        config.eos_token_id = self.eos_token_id
        config.stop_token_ids = {self.eos_token_id}
        first: list[float] = []

        class _Clock(openvino_genai.StreamerBase):  # type: ignore[misc]
            def write(self, token: Any) -> Any:
                if not first:
                    first.append(time.perf_counter())
                return openvino_genai.StreamingStatus.RUNNING

            def end(self) -> None:
                pass

        ids = inputs["input_ids"].numpy()
        tokenized = openvino_genai.TokenizedInputs(ov.Tensor(ids), ov.Tensor(inputs["attention_mask"].numpy()))
        with self._lock:
            out = self.pipe.generate(tokenized, config, _Clock())
        new = torch.tensor([list(out.tokens[0])], dtype=torch.long)
        full = torch.cat([inputs["input_ids"], new], dim=1)
        return self._result(full, prompt_len, max_tokens, stop, first[0] if first else None)


@contextlib.contextmanager
def _ov_loading() -> Iterator[None]:
    """Let ``Generator.load`` (which :func:`bench.serving.measure` calls) load :class:`OvPath` folders."""
    original = Generator.__dict__["load"]

    def load(cls: type[Generator], path: Path | str, threads: int = 0) -> Generator:
        if isinstance(path, OvPath):
            return OvGenerator.load_ov(path, threads=threads)
        return original.__func__(cls, path, threads=threads)

    Generator.load = classmethod(load)  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        Generator.load = original  # type: ignore[method-assign]


def _prompt_ids(gen: Generator, messages: list[dict[str, str]]) -> list[int]:
    ids = getattr(gen, "_prompt_ids", None)  # OrtGenerator's own path to its ids
    return list(ids(messages)) if ids else gen._encode(messages)["input_ids"][0].tolist()


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print one table per thread count (and the JSON with ``--json``)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--formats", default=DEFAULT_FORMATS, help="float32 first: every ratio is against it")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--prompts", type=int, default=4, help="served RAG requests per format and thread count")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--k", type=int, default=4, help="passages per RAG prompt")
    parser.add_argument("--ppl-items", type=int, default=8, help="holdout items for perplexity (0: skip)")
    parser.add_argument("--ov-dir", type=Path, default=Path("/tmp/ov-models"), help="holds int4/, int8/, fp16/ ...")
    parser.add_argument("--ov-runtime", default=os.environ.get("ATALAIA_OV_RUNTIME", "/tmp/ovrt"))
    parser.add_argument("--prefix-caching", action="store_true", help="keep LLMPipeline's prefix cache on")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = parser.parse_args(argv)
    global PREFIX_CACHING
    PREFIX_CACHING = args.prefix_caching

    sys.path.append(args.ov_runtime)  # after the venv: its numpy, torch, transformers win
    import openvino as ov
    import openvino_genai

    from atalaia.rag import HashingEmbedder, RetrievalIndex, build_prompt, chunk_regulations
    from retrain.dataset import load_qa
    from retrain.evaluate import answer_perplexities
    from retrain.train import user_messages

    settings = get_settings()
    assert settings.qa_holdout_file is not None and settings.regulations_dir is not None  # resolved by Settings
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    thread_counts = [int(t) for t in args.threads.split(",")]
    holdout = load_qa(settings.qa_holdout_file)
    index = RetrievalIndex.build(chunk_regulations(settings.regulations_dir), HashingEmbedder())
    questions = [q.question for q in holdout[: args.prompts]]
    default_hint = str(ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT"))
    print(f"openvino {ov.get_version()}, openvino_genai {openvino_genai.__version__}; CPU default hint {default_hint}")

    tmp = Path(tempfile.mkdtemp(prefix="atalaia-bench-serving-ov-"))
    folders: dict[str, Path] = {
        fmt: _ov_folder(fmt, args.ov_dir) if fmt.startswith("ov-") else _folder(fmt, settings, tmp) for fmt in formats
    }
    ppl: dict[str, float] = {}
    compiled: dict[str, dict[str, str]] = {}
    report: dict[str, Any] = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "openvino": ov.get_version(),
        "default_hint": default_hint,
        "threads": {},
    }
    for threads in thread_counts:
        with _ov_loading():
            res = measure(formats, folders, questions, index, threads=threads, k=args.k, new_tokens=args.new_tokens)
        gens = res.pop("_gens")
        # Every format must have seen the same prompt tokens.
        for question in questions:
            messages = build_prompt(question, [p for p, _ in index.search(question, args.k)])
            ref = _prompt_ids(gens[formats[0]], messages)
            for fmt in formats[1:]:
                if _prompt_ids(gens[fmt], messages) != ref:
                    raise SystemExit(f"{fmt} sees other prompt tokens than {formats[0]}")
        if args.ppl_items and not ppl:
            items = holdout[: args.ppl_items]
            for fmt in formats:
                gen = gens[fmt]
                ppl[fmt], _ = answer_perplexities(
                    gen.model, gen.tokenizer, [user_messages(i.question) for i in items], [i.answer for i in items]
                )
                if isinstance(gen, OvGenerator):
                    compiled[fmt] = gen.model.compiled_properties
                    gen.model._request = None
        del gens
        gc.collect()
        base = res[formats[0]]
        pt = base["prompt_tokens"]
        print(
            f"\n{threads} thread(s); served RAG requests, prompts of {min(pt)}-{max(pt)} tokens (identical ids in "
            f"every format), up to {args.new_tokens} new tokens, n={len(questions)} per format; ratios vs {formats[0]}"
        )
        hints = {
            fmt: compiled.get(fmt, {}).get("INFERENCE_PRECISION_HINT")
            or getattr(folders[fmt], "hint", None)
            or default_hint
            for fmt in formats
            if fmt.startswith("ov-")
        }
        print_table(res, formats, ppl, hints)
        report["threads"][str(threads)] = res
    if compiled:
        print("\ncompiled IR properties (perplexity pass):")
        for fmt, props in compiled.items():
            print(f"  {fmt}: {props}")
    report["compiled"] = compiled
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=str) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
