"""Serving formats side by side: float32 transformers, torch int8, ONNX Runtime and OpenVINO GenAI exports.

Every format is loaded through :meth:`atalaia.models.generator.Generator.load` (as the service
and the gate load a version) and measured on the served workload, in one run, the formats
alternating request by request so that all see the same background load:

- prefill: time to first token of a served RAG request (the service's ``build_prompt`` with
  ``--k`` retrieved passages, about 500-600 tokens), p50 / p95, and prompt tokens per second;
- decode tokens/s after that prompt: ``(n - 1) / (t_end - t_first_token)`` of the same request;
- end-to-end served RAG request: retrieval + prompt + greedy answer of up to ``--new-tokens``
  (the gate's and the service's defaults are 64), median;
- holdout perplexity of the reference answers given the bare question (``--ppl-items``);
- size on disk, load time and resident memory added by loading the format and serving once (RSS).

Every ratio is against float32 transformers measured in the same run; the last columns check the
issue 17 targets (decode >= 4x, prefill no slower, request >= 2x faster, perplexity within +5 %).
ORT and OpenVINO exports are made once with :func:`atalaia.models.exports.prepare_export` and
cached next to the prepared model; the int8 folder is quantized into a temporary folder.

    .venv/bin/python -m bench.serving [--formats float32,int8,ort-int4,ort-int8,ov-int8] [--threads 1,2]
        [--prompts 6] [--new-tokens 64] [--ppl-items 12] [--json out.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from atalaia.settings import get_settings
from bench.common import pct

#: Targets of issue 17, as ratios against float32 transformers.
TARGETS = {"decode": 4.0, "prefill": 1.0, "request": 2.0, "ppl": 1.05}


def ratios_to_base(
    row: dict[str, Any], base: dict[str, Any], ppl: float | None, base_ppl: float | None
) -> tuple[float, float, float, float]:
    """A format's prefill, decode and request speed-ups and its perplexity ratio against ``base``.

    >>> ratios_to_base({"prefill_tps_p50": 200, "decode_p50": 40, "request_p50": 2.0},
    ...                {"prefill_tps_p50": 400, "decode_p50": 10, "request_p50": 4.0}, 42.0, 40.0)
    (0.5, 4.0, 2.0, 1.05)
    """
    nan = float("nan")
    return (
        row["prefill_tps_p50"] / base["prefill_tps_p50"],
        row["decode_p50"] / base["decode_p50"],
        base["request_p50"] / row["request_p50"],
        (ppl if ppl is not None else nan) / (base_ppl if base_ppl is not None else nan),
    )


def target_checks(prefill_x: float, decode_x: float, request_x: float, ppl_x: float) -> list[str]:
    """``ok`` or ``MISS`` per issue 17 target, from a format's ratios against float32.

    >>> target_checks(1.2, 3.0, 2.5, 1.02)
    ['decode MISS', 'prefill ok', 'request ok', 'ppl ok']
    """
    return [
        f"decode {'ok' if decode_x >= TARGETS['decode'] else 'MISS'}",
        f"prefill {'ok' if prefill_x >= TARGETS['prefill'] else 'MISS'}",
        f"request {'ok' if request_x >= TARGETS['request'] else 'MISS'}",
        f"ppl {'ok' if ppl_x <= TARGETS['ppl'] else 'MISS'}",
    ]


def print_table(
    res: dict[str, dict[str, Any]], formats: list[str], ppl: dict[str, float], hints: dict[str, str] | None = None
) -> None:
    """Print one thread count's Markdown table, ratios against ``formats[0]``, and record the ratios
    (and ``hint``, the precision hint column, when ``hints`` is given) in each format's row."""
    base = res[formats[0]]
    hint_head, hint_rule = ("| hint ", "---|") if hints is not None else ("", "")
    print(
        f"| format {hint_head}| size MB | load s | RSS MB | TTFT p50 s | TTFT p95 s | prefill tok/s | decode tok/s "
        "| request p50 s (tokens) | ppl | prefill x | decode x | request x | ppl x | targets |"
    )
    print("|" + hint_rule + "---|" * 15)
    for fmt in formats:
        r = res[fmt]
        pre_x, dec_x, req_x, ppl_x = ratios_to_base(r, base, ppl.get(fmt), ppl.get(formats[0]))
        met = target_checks(pre_x, dec_x, req_x, ppl_x)
        r.update(prefill_x=pre_x, decode_x=dec_x, request_x=req_x, ppl=ppl.get(fmt), ppl_x=ppl_x)
        hint_cell = ""
        if hints is not None:
            r["hint"] = hints.get(fmt, "-")
            hint_cell = f"| {r['hint']} "
        print(
            f"| {fmt} {hint_cell}| {r['size_mb']:.0f} | {r['load_s']:.2f} | {r['rss_mb']:.0f} | {r['ttft_p50']:.2f} "
            f"| {r['ttft_p95']:.2f} | {r['prefill_tps_p50']:.0f} | {r['decode_p50']:.1f} "
            f"| {r['request_p50']:.2f} ({r['tokens_p50']:.0f}) | {ppl.get(fmt, float('nan')):.3f} "
            f"| {pre_x:.2f} | {dec_x:.2f} | {req_x:.2f} | {ppl_x:.3f} | {', '.join(met)} |"
        )


def _folder(fmt: str, settings: Any, tmp: Path) -> Path:
    from atalaia.models.exports import backend_of, export_dir_for, prepare_export

    base = settings.generator_path
    if fmt == "float32":
        return Path(base)
    if fmt == "int8":
        from retrain.quantize import quantize_model

        return quantize_model(Path(base), tmp / "int8").path
    if backend_of(fmt) is not None:
        return prepare_export(base, export_dir_for(settings.models_dir, settings.generator_model, fmt), fmt)
    raise SystemExit(f"unknown format {fmt!r}: float32, int8, ort-int4, ort-int8, ort-fp32, ov-int8, ov-int4, ov-fp32")


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _rss() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def measure(
    formats: list[str],
    folders: dict[str, Path],
    questions: list[str],
    index: Any,
    *,
    threads: int,
    k: int,
    new_tokens: int,
) -> dict[str, dict[str, Any]]:
    """Load every format at ``threads`` and serve the RAG questions, alternating formats per request."""
    import torch

    from atalaia.models.generator import Generator
    from atalaia.rag import build_prompt

    torch.set_num_threads(threads)
    gens: dict[str, Any] = {}
    out: dict[str, dict[str, Any]] = {}
    warm = build_prompt(questions[0], [p for p, _ in index.search(questions[0], k)])
    for fmt in formats:
        gc.collect()
        rss0 = _rss()
        t0 = time.perf_counter()
        gens[fmt] = Generator.load(folders[fmt], threads=threads)
        load_s = time.perf_counter() - t0
        gens[fmt].chat(warm, max_tokens=2)  # warm-up: first calls pack weights, allocate arenas
        out[fmt] = {
            "load_s": load_s,
            "rss_mb": (_rss() - rss0) / 1e6,
            "size_mb": _size(folders[fmt]) / 1e6,
            "ttft": [],
            "prefill_tps": [],
            "decode": [],
            "request": [],
            "tokens": [],
        }
    prompt_tokens: list[int] = []
    for i, question in enumerate(questions):
        order = formats if i % 2 == 0 else formats[::-1]  # alternate: same background load for all
        for fmt in order:
            gen, rec = gens[fmt], out[fmt]
            t0 = time.perf_counter()
            # The served request: retrieval, the service's prompt, a greedy answer.
            messages = build_prompt(question, [p for p, _ in index.search(question, k)])
            result = gen.chat(messages, max_tokens=new_tokens, temperature=0.0)
            t_end = time.perf_counter()
            first = result.first_token_at or t_end
            rec["ttft"].append(first - t0)
            rec["prefill_tps"].append(result.prompt_tokens / (first - t0))
            rec["request"].append(t_end - t0)
            rec["tokens"].append(result.completion_tokens)
            if result.completion_tokens > 1 and t_end > first:
                rec["decode"].append((result.completion_tokens - 1) / (t_end - first))
            if fmt == formats[0]:
                prompt_tokens.append(result.prompt_tokens)
    for fmt in formats:
        rec = out[fmt]
        rec.update(
            ttft_p50=pct(rec["ttft"], 50),
            ttft_p95=pct(rec["ttft"], 95),
            prefill_tps_p50=_median(rec["prefill_tps"]),
            decode_p50=_median(rec["decode"]),
            request_p50=_median(rec["request"]),
            tokens_p50=_median([float(t) for t in rec["tokens"]]),
            prompt_tokens=prompt_tokens,
        )
    out["_gens"] = gens  # type: ignore[assignment]
    return out


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print one table per thread count (and the JSON with ``--json``)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--formats", default="float32,int8,ort-int4,ort-int8,ov-int8")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--prompts", type=int, default=6, help="served RAG requests per format and thread count")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--k", type=int, default=4, help="passages per RAG prompt")
    parser.add_argument("--ppl-items", type=int, default=12, help="holdout items for perplexity (0: skip)")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = parser.parse_args(argv)

    from atalaia.rag import HashingEmbedder, RetrievalIndex, chunk_regulations
    from retrain.dataset import load_qa
    from retrain.evaluate import answer_perplexities
    from retrain.train import user_messages

    settings = get_settings()
    assert settings.qa_holdout_file is not None and settings.regulations_dir is not None  # resolved by Settings
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    thread_counts = [int(t) for t in args.threads.split(",")]
    holdout = load_qa(settings.qa_holdout_file)
    # Retrieval quality does not matter here, only a served prompt's length and the retrieval
    # step's presence: a hashing embedder keeps the bench independent of sentence-transformers.
    index = RetrievalIndex.build(chunk_regulations(settings.regulations_dir), HashingEmbedder())
    questions = [q.question for q in holdout[: args.prompts]]

    tmp = Path(tempfile.mkdtemp(prefix="atalaia-bench-serving-"))
    folders = {fmt: _folder(fmt, settings, tmp) for fmt in formats}
    ppl: dict[str, float] = {}
    report: dict[str, Any] = {"args": vars(args) | {"json": str(args.json)}, "threads": {}}
    for threads in thread_counts:
        res = measure(formats, folders, questions, index, threads=threads, k=args.k, new_tokens=args.new_tokens)
        gens = res.pop("_gens")
        if args.ppl_items and not ppl:
            items = holdout[: args.ppl_items]
            for fmt in formats:
                gen = gens[fmt]
                ppl[fmt], _ = answer_perplexities(
                    gen.model, gen.tokenizer, [user_messages(i.question) for i in items], [i.answer for i in items]
                )
        del gens
        gc.collect()
        base = res[formats[0]]
        pt = base["prompt_tokens"]
        print(
            f"\n{threads} thread(s); served RAG requests, prompts of {min(pt)}-{max(pt)} tokens, "
            f"up to {args.new_tokens} new tokens, n={len(questions)} per format; ratios vs {formats[0]}"
        )
        print_table(res, formats, ppl)
        report["threads"][str(threads)] = res
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=str) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
