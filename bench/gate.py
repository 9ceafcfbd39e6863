"""The gate's holdout generation: one question at a time vs batched, per serving format, in one run.

The retraining gate (:func:`retrain.evaluate.evaluate_model`) answers ``--limit`` holdout
questions with RAG prompts (greedy, ``ATALAIA_EVAL_MAX_TOKENS``) for each version it compares.
This bench runs exactly that for each variant ``format:batch`` (``float32:1`` is main's gate,
``float32:8`` the batched transformers gate, ``ort-int4:1`` the ORT version, which answers one at a
time), alternating the variants round by round, and reports the answering time per question
(medians over rounds), the full evaluation time (answers, similarity, toxicity, perplexity) and the
gate time for ``--versions`` versions; the target of issue 17 is a gate <= 60 s for 16 questions x
2 versions.

    .venv/bin/python -m bench.gate [--variants float32:1,float32:8,ort-int4:1,ov-int8:1] [--limit 16] [--rounds 1]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

from atalaia.settings import get_settings


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default="float32:1,float32:8,ort-int4:1")
    parser.add_argument("--limit", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--versions", type=int, default=2, help="versions a gate evaluates (target: 2)")
    parser.add_argument("--threads", type=int, default=0, help="torch/ORT threads (0: settings.torch_threads)")
    args = parser.parse_args(argv)

    from atalaia.models.exports import backend_of, export_dir_for, prepare_export
    from retrain.evaluate import EvalResources, evaluate_model, load_holdout

    settings = get_settings()
    if args.threads:
        settings = settings.model_copy(update={"torch_threads": args.threads})
    holdout = load_holdout(settings)
    resources = EvalResources.load(settings, rag=True)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    folders: dict[str, Path] = {}
    for v in variants:
        fmt = v.split(":")[0]
        if fmt == "float32":
            folders[fmt] = Path(settings.generator_path)
        elif backend_of(fmt) is not None:
            assert settings.models_dir is not None
            out = export_dir_for(settings.models_dir, settings.generator_model, fmt)
            folders[fmt] = prepare_export(settings.generator_path, out, fmt)
        else:
            raise SystemExit(f"unknown format {fmt!r}")
    per_q: dict[str, list[float]] = {v: [] for v in variants}
    total: dict[str, list[float]] = {v: [] for v in variants}
    rouge: dict[str, float] = {}
    for r in range(args.rounds):
        for v in variants if r % 2 == 0 else variants[::-1]:
            fmt, batch = v.split(":")
            s: Any = settings.model_copy(update={"eval_batch_size": int(batch)})
            t0 = time.perf_counter()
            report = evaluate_model(folders[fmt], holdout, rag=True, settings=s, limit=args.limit, resources=resources)
            total[v].append(time.perf_counter() - t0)
            per_q[v].append(report.seconds_per_question)
            rouge[v] = report.rouge_l
            print(f"round {r}: {v}: {report.seconds_per_question:.2f} s/question, evaluation {total[v][-1]:.1f} s")
    base = variants[0]
    print(
        f"\n{args.limit} holdout questions with RAG, {settings.eval_max_tokens} new tokens max, "
        f"{settings.torch_threads or 'default'} thread(s), median of {args.rounds} round(s)"
    )
    print(
        f"| variant | answering s/question | vs {base} | evaluation s (one version) "
        f"| gate s ({args.versions} versions) | ROUGE-L |"
    )
    print("|---|---|---|---|---|---|")
    for v in variants:
        q, e = statistics.median(per_q[v]), statistics.median(total[v])
        print(
            f"| {v} | {q:.2f} | {statistics.median(per_q[base]) / q:.2f}x faster | {e:.1f} "
            f"| {e * args.versions:.0f} | {rouge[v]:.3f} |"
        )


if __name__ == "__main__":
    main()
