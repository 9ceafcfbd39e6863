"""Latency of :class:`inference.cache.ResponseCache` lookups at its default size.

A full cache (1,024 entries, default) holds 384-dimensional unit embeddings (the size of
all-MiniLM-L6-v2), all in one scope (same model version, parameters and system prompt), so every
semantic lookup scans every row: the worst case. Each lookup is timed from the request's messages,
so keying (normalising and hashing the conversation) is included; computing the embedding is not
(it is the embedder's cost, paid once per request whether the cache hits or not).

- exact hit: a stored conversation, whitespace changed;
- semantic hit: a new question whose embedding is within cosine 0.97 of a stored one (threshold 0.95);
- miss: a new question with a random embedding (scans every row, finds nothing).

Usage::

    .venv/bin/python bench/cache.py [--lookups 3000] [--entries 1024] [--dim 384]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import summary
from inference.cache import KeyParts, ResponseCache

SYSTEM = "You are an HR assistant. Answer from the company's regulations; say so when you do not know."
PARAMS = {"temperature": 0.0, "max_tokens": 128, "top_p": 1.0, "stop": None}


def _messages(i: int, spaced: bool = False) -> list[dict[str, str]]:
    sep = "   " if spaced else " "
    question = sep.join(["How", "many", "vacation", "days", "do", "I", "get", "in", f"year {i}", "of", "service?"])
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]


def _near(v: np.ndarray, cos: float, rng: np.random.Generator) -> np.ndarray:
    """A unit vector at cosine ``cos`` from unit vector ``v``."""
    noise = rng.standard_normal((v.shape[0],))
    noise = noise - float(noise @ v) * v  # the part orthogonal to v
    noise = noise / np.linalg.norm(noise)
    return cos * v + np.sqrt(1 - cos**2) * noise


def _time_ms(fn: Callable[..., object], args: list[tuple[object, ...]]) -> list[float]:
    """Milliseconds of each ``fn(*a)``: per call, because the target is a tail percentile."""
    out = []
    for a in args:
        start = time.perf_counter_ns()
        fn(*a)
        out.append((time.perf_counter_ns() - start) / 1e6)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lookups", type=int, default=3000)
    parser.add_argument("--entries", type=int, default=1024)
    parser.add_argument("--dim", type=int, default=384)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    stored = rng.standard_normal((args.entries, args.dim)).astype(np.float32)
    stored /= np.linalg.norm(stored, axis=1, keepdims=True)
    cache = ResponseCache(max_entries=args.entries, semantic_threshold=0.95)

    start = time.perf_counter()
    for i in range(args.entries):
        cache.put(KeyParts.from_request("m@1", _messages(i), PARAMS), f"answer {i}", embedding=stored[i])
    put_ms = (time.perf_counter() - start) * 1000 / args.entries
    assert len(cache) == args.entries

    picks = rng.integers(0, args.entries, args.lookups)

    def lookup(messages: Any, embedding: Any) -> object:
        return cache.get(KeyParts.from_request("m@1", messages, PARAMS), embedding)

    exact_args: list[tuple[object, ...]] = [(_messages(int(i), spaced=True), stored[i]) for i in picks]
    semantic_args: list[tuple[object, ...]] = [
        (_messages(args.entries + k), _near(stored[i].astype(np.float64), 0.97, rng)) for k, i in enumerate(picks)
    ]
    miss_args: list[tuple[object, ...]] = [
        (_messages(args.entries + k), rng.standard_normal(args.dim)) for k in range(args.lookups)
    ]

    lookup(*exact_args[0])  # warm up (first BLAS call, allocations)
    results = {
        "exact hit": _time_ms(lookup, exact_args),
        "semantic hit": _time_ms(lookup, semantic_args),
        "miss (full scan)": _time_ms(lookup, miss_args),
    }
    s = cache.stats
    assert s.hits_exact == args.lookups + 1 and s.hits_semantic == args.lookups and s.misses == args.lookups, s

    print(f"ResponseCache: {args.entries} entries x {args.dim} dims, one scope; times in ms, keying included")
    for name, times in results.items():
        print(f"  {name:<18} {summary(times)}")
    print(f"  put (mean)         {put_ms:8.3f}")


if __name__ == "__main__":
    main()
