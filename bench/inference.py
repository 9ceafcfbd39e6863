"""Inference benchmarks: answers with and without retrieval on the holdout, and cache-hit latency.

1. For the first ``--n`` holdout questions, the real service (SmolLM2, greedy, ``--max-tokens``)
   answers once with RAG and once without; reported side by side: ROUGE-L against the reference
   answer, the share of answers that contain the reference's key numbers, the share whose
   retrieved passages include the gold section, and latency.
2. Latency of cache hits through the HTTP app (exact and semantic), p50/p95, against misses.

Usage::

    .venv/bin/python bench/inference.py [--n 30] [--max-tokens 48]
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=30)
    parser.add_argument("--max-tokens", type=int, default=48)
    args = parser.parse_args()

    import tempfile

    from fastapi.testclient import TestClient

    from atalaia.logs import configure_logging
    from atalaia.metrics.embedding import Embedder
    from atalaia.metrics.text import rouge_scores
    from atalaia.models.embedder import load_embedder
    from atalaia.models.generator import Generator
    from atalaia.settings import Settings
    from inference.app import create_app
    from inference.cache import ResponseCache
    from inference.rag import load_or_build, read_qa

    configure_logging("WARNING", json_lines=False)
    base = Settings()
    settings = base.model_copy(update={"home": Path(tempfile.mkdtemp(prefix="atalaia-bench-inf-"))})
    generator = Generator.load(base.generator_path)
    embedder = Embedder(load_embedder(base))
    assert base.regulations_dir is not None
    index = load_or_build(base.regulations_dir, embedder, settings.home / "rag")
    holdout = read_qa(Path(__file__).resolve().parents[1] / "data" / "qa" / "holdout.jsonl")[: args.n]
    print(f"# inference benchmark ({time.strftime('%Y-%m-%d %H:%M')}), {len(holdout)} holdout questions")

    rag_app = TestClient(create_app(settings, generator, None, retriever=index, embedder=embedder))
    plain_app = TestClient(create_app(settings, generator, None))
    rows: dict[str, dict[str, list[float]]] = {"with RAG": {}, "without RAG": {}}
    for item in holdout:
        numbers = set(re.findall(r"\d+(?:[.,]\d+)*", item["answer"]))
        for name, client in (("with RAG", rag_app), ("without RAG", plain_app)):
            t0 = time.perf_counter()
            r = client.post(
                "/v1/chat/completions",
                json={
                    "model": base.model_version,
                    "max_tokens": args.max_tokens,
                    "messages": [{"role": "user", "content": item["question"]}],
                },
            )
            latency = (time.perf_counter() - t0) * 1000
            answer = r.json()["choices"][0]["message"]["content"]
            stats = rows[name]
            stats.setdefault("rougeL", []).append(
                rouge_scores(answer, item["answer"])["rougeL"] if answer.strip() else 0.0
            )
            stats.setdefault("facts", []).append(1.0 if numbers and all(n in answer for n in numbers) else 0.0)
            stats.setdefault("latency", []).append(latency)
    with_numbers = sum(1 for item in holdout if re.search(r"\d", item["answer"]))
    hits = [
        item["section"] in {p.section for p, _ in index.search(item["question"], base.rag_top_k)} for item in holdout
    ]
    header = f"ROUGE-L mean | answers with the reference's numbers (of {with_numbers})"
    print(f"\n| | {header} | gold section retrieved | latency p50 (ms) |")
    print("|---|---|---|---|---|")
    for name, stats in rows.items():
        retrieved = f"{sum(hits) / len(hits):.2f}" if name == "with RAG" else "-"
        print(
            f"| {name} | {statistics.mean(stats['rougeL']):.3f} | {int(sum(stats['facts']))} | {retrieved} | "
            f"{statistics.median(stats['latency']):.0f} |"
        )

    cache_app = TestClient(
        create_app(
            settings, generator, None, retriever=index, embedder=embedder, cache=ResponseCache(semantic_threshold=0.9)
        )
    )
    q = "How many days of annual leave do employees in Brazil get?"
    body = {"model": base.model_version, "max_tokens": 16, "messages": [{"role": "user", "content": q}]}
    t0 = time.perf_counter()
    cache_app.post("/v1/chat/completions", json=body)
    miss_ms = (time.perf_counter() - t0) * 1000
    exact, semantic = [], []
    for _ in range(200):
        t0 = time.perf_counter()
        assert cache_app.post("/v1/chat/completions", json=body).headers["x-atalaia-cache"] == "exact"
        exact.append((time.perf_counter() - t0) * 1000)
    reworded = body | {
        "messages": [{"role": "user", "content": "How many annual leave days do employees in Brazil get?"}]
    }
    for _ in range(50):
        t0 = time.perf_counter()
        kind = cache_app.post("/v1/chat/completions", json=reworded).headers.get("x-atalaia-cache")
        semantic.append((time.perf_counter() - t0) * 1000)
    print(f"\n## cache through the HTTP app (ms); the miss that filled it: {miss_ms:.0f} ms")
    print(f"{'exact hit':16s} {summary(exact)}")
    print(f"{'semantic hit':16s} {summary(semantic)}  (last lookup: {kind})")


if __name__ == "__main__":
    main()
