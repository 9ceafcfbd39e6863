"""Serving formats side by side: float32 transformers, torch int8, ONNX Runtime GenAI exports.

Every format is loaded through :meth:`atalaia.models.generator.Generator.load` (as the service
and the gate load a version) and measured on the served workload, in one run, the formats
alternating request by request so that all see the same background load:

- time to first token on served RAG prompts (the service's ``build_prompt`` with ``--k``
  retrieved passages, about 500-600 tokens): ``chat(max_tokens=1)``, p50 / p95;
- decode tokens/s after that prompt: ``(n - 1) / (t(n) - t(1))`` for a ``--new-tokens`` reply;
- holdout perplexity of the reference answers given the bare question (``--ppl-items``);
- size on disk and load time.

ORT exports are made once with :func:`atalaia.models.ortgenai.prepare_ort` and cached next to the
prepared model; the int8 folder is quantized into a temporary folder.

    .venv/bin/python -m bench.serving [--formats float32,int8,ort-int4] [--threads 1,2]
        [--prompts 4] [--new-tokens 32] [--ppl-items 12]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from atalaia.settings import get_settings
from bench.common import pct


def _folder(fmt: str, settings: Any, tmp: Path) -> Path:
    from atalaia.models.ortgenai import ort_dir_for, prepare_ort

    base = settings.generator_path
    if fmt == "float32":
        return Path(base)
    if fmt == "int8":
        from retrain.quantize import quantize_model

        return quantize_model(Path(base), tmp / "int8").path
    if fmt.startswith("ort-"):
        precision = fmt.removeprefix("ort-")
        return prepare_ort(
            base, ort_dir_for(settings.models_dir, settings.generator_model, precision), precision=precision
        )
    raise SystemExit(f"unknown format {fmt!r}: float32, int8, ort-int4, ort-int8, ort-fp32")


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print one table per thread count."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--formats", default="float32,int8,ort-int4")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--prompts", type=int, default=4, help="served RAG prompts per format and thread count")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--k", type=int, default=4, help="passages per RAG prompt")
    parser.add_argument("--ppl-items", type=int, default=12, help="holdout items for perplexity (0: skip)")
    args = parser.parse_args(argv)

    from atalaia.models.generator import Generator
    from atalaia.rag import HashingEmbedder, RetrievalIndex, build_prompt, chunk_regulations
    from retrain.dataset import load_qa
    from retrain.evaluate import answer_perplexities
    from retrain.train import user_messages

    settings = get_settings()
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    holdout = load_qa(settings.qa_holdout_file)
    # Retrieval quality does not matter here, only a served prompt's length: a hashing embedder
    # keeps the bench independent of the sentence-transformers model.
    index = RetrievalIndex.build(chunk_regulations(settings.regulations_dir), HashingEmbedder())
    rag = [build_prompt(q.question, [p for p, _ in index.search(q.question, args.k)]) for q in holdout[: args.prompts]]

    tmp = Path(tempfile.mkdtemp(prefix="atalaia-bench-serving-"))
    folders = {fmt: _folder(fmt, settings, tmp) for fmt in formats}
    for threads in [int(t) for t in args.threads.split(",")]:
        gens: dict[str, Any] = {}
        load_s: dict[str, float] = {}
        for fmt in formats:
            t0 = time.perf_counter()
            gens[fmt] = Generator.load(folders[fmt], threads=threads)
            load_s[fmt] = time.perf_counter() - t0
        ttft: dict[str, list[float]] = {f: [] for f in formats}
        decode: dict[str, list[float]] = {f: [] for f in formats}
        prompt_tokens = [gens[formats[0]].count_prompt_tokens(m) for m in rag]
        for messages in rag:
            for fmt in formats:  # alternate: every format sees the same background load
                gen = gens[fmt]
                t0 = time.perf_counter()
                gen.chat(messages, max_tokens=1)
                t1 = time.perf_counter()
                out = gen.chat(messages, max_tokens=args.new_tokens)
                t2 = time.perf_counter()
                ttft[fmt].append(t1 - t0)
                if out.completion_tokens > 1 and (t2 - t1) > (t1 - t0):
                    decode[fmt].append((out.completion_tokens - 1) / ((t2 - t1) - (t1 - t0)))
        ppl: dict[str, float] = {}
        if args.ppl_items and threads == max(int(t) for t in args.threads.split(",")):
            items = holdout[: args.ppl_items]
            for fmt in formats:
                gen = gens[fmt]
                ppl[fmt], _ = answer_perplexities(
                    gen.model, gen.tokenizer, [user_messages(i.question) for i in items], [i.answer for i in items]
                )
        base = formats[0]
        print(f"\n{threads} thread(s); RAG prompts of {min(prompt_tokens)}-{max(prompt_tokens)} tokens, n={len(rag)}")
        print(
            "| format | size MB | load s | TTFT p50 s | TTFT p95 s | decode tok/s "
            "| TTFT vs first | decode vs first | ppl |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        for fmt in formats:
            t50, d50 = pct(ttft[fmt], 50), statistics.median(decode[fmt]) if decode[fmt] else float("nan")
            b50 = pct(ttft[base], 50)
            bd = statistics.median(decode[base]) if decode[base] else float("nan")
            print(
                f"| {fmt} | {_size(folders[fmt]) / 1e6:.0f} | {load_s[fmt]:.2f} | {t50:.2f} | {pct(ttft[fmt], 95):.2f} "
                f"| {d50:.1f} | {t50 / b50:.2f}x | {d50 / bd:.2f}x | {ppl.get(fmt, float('nan')):.3f} |"
            )
        del gens


if __name__ == "__main__":
    main()
