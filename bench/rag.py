"""Benchmark of retrieval over the regulations handbook (``inference/rag.py``), this machine.

Reports, with the real all-MiniLM-L6-v2 on CPU:

1. the time to load the embedder (once per process, not part of the index);
2. the index build time (chunk + embed every passage), median of ``--repeats`` builds;
3. the load-from-cache time of :func:`inference.rag.load_or_build` on an unchanged handbook;
4. per-query search latency, p50/p95/p99: a new question (encode + search), a repeated question
   (query-embedding cache hit) and a precomputed vector (the matrix product and sort alone);
5. hit-rate@1/3/5 on ``data/qa/train.jsonl`` and ``data/qa/holdout.jsonl`` for each ``--max-words``.

Usage::

    .venv/bin/python bench/rag.py [--max-words 120 90 60] [--repeats 3]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import summary

REPO = Path(__file__).resolve().parents[1]
REGULATIONS = REPO / "data" / "regulations"
QA = REPO / "data" / "qa"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-words", type=int, nargs="+", default=[120], help="passage sizes to compare")
    parser.add_argument("--repeats", type=int, default=3, help="index builds timed per passage size")
    parser.add_argument("--k", type=int, default=3, help="passages per query in the latency runs")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import torch

    from atalaia.metrics.embedding import Embedder
    from atalaia.models.embedder import load_embedder
    from inference.rag import chunk_regulations, hit_rate_at_k, load_or_build, read_qa

    print(f"torch threads: {torch.get_num_threads()}")
    t0 = time.perf_counter()
    embedder = Embedder(load_embedder())
    print(f"embedder load: {time.perf_counter() - t0:.2f} s (once per process)")
    train = read_qa(QA / "train.jsonl")
    holdout = read_qa(QA / "holdout.jsonl")
    embedder.encode(["warm-up"])  # the first call pays one-off allocations

    for max_words in args.max_words:
        passages = chunk_regulations(REGULATIONS, max_words=max_words)
        words = [len(p.body.split()) for p in passages]
        print(
            f"\n== max_words={max_words}: {len(passages)} passages, "
            f"words/passage mean {statistics.mean(words):.0f} max {max(words)}"
        )
        builds = []
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory() as cache:
                t0 = time.perf_counter()
                index = load_or_build(REGULATIONS, embedder, Path(cache), max_words=max_words)
                builds.append(time.perf_counter() - t0)
                loads = []
                for _ in range(20):
                    t0 = time.perf_counter()
                    load_or_build(REGULATIONS, embedder, Path(cache), max_words=max_words)
                    loads.append((time.perf_counter() - t0) * 1000)
        print(f"index build (s):        median {statistics.median(builds):.2f}  all {[round(b, 2) for b in builds]}")
        print(f"load from cache (ms):   {summary(loads)}")

        questions = [q["question"] for q in holdout]
        new, repeated, vector = [], [], []
        index.query_cache_size = 0  # every question encoded
        for q in questions:
            t0 = time.perf_counter()
            index.search(q, k=args.k)
            new.append((time.perf_counter() - t0) * 1000)
        index.query_cache_size = len(questions)
        for q in questions:
            index.search(q, k=args.k)  # fill the cache
        for q in questions:
            t0 = time.perf_counter()
            index.search(q, k=args.k)
            repeated.append((time.perf_counter() - t0) * 1000)
        vectors = embedder.encode(questions)
        for v in vectors:
            t0 = time.perf_counter()
            index.search(v, k=args.k)
            vector.append((time.perf_counter() - t0) * 1000)
        print(f"search, new question (ms):      {summary(new)}")
        print(f"search, repeated question (ms): {summary(repeated)}")
        print(f"search, query vector (ms):      {summary(vector)}")
        t0 = time.perf_counter()
        index.search_many(questions, k=args.k)
        batched = (time.perf_counter() - t0) * 1000 / len(questions)
        print(f"search_many, {len(questions)} questions: {batched:.2f} ms per question")

        for name, items in (("train", train), ("holdout", holdout)):
            rates = hit_rate_at_k(index, items, ks=(1, 3, 5))
            print(
                f"hit-rate {name:8s} (n={len(items):3d}): " + "  ".join(f"@{k} {rate:.3f}" for k, rate in rates.items())
            )


if __name__ == "__main__":
    main()
