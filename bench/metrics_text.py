"""Benchmark of the quality metrics: text overlap (pairs/s) and toxicity (texts/s), side by side.

Measures, on one synthetic corpus of response/reference pairs (regulation-like English, a
response sharing about 60% of its reference's words):

- ROUGE-1/2/L as ``atalaia.metrics.text`` computes it, with and without the stemmer, next to the
  ``rouge-score`` package it reproduces;
- sacrebleu sentence BLEU, and ROUGE+BLEU together (the per-event cost without METEOR);
- METEOR with WordNet (when installed) and the exact+stem fallback, and the whole
  ``TextOverlapScorer.score``;
- toxicity: the offline default (alt-profanity-check) in batches and one text per call, and
  Detoxify with the tiny random test checkpoint (its speed, not its quality: a real checkpoint is
  ~100x larger).

Each number is the median of ``--repeats`` runs over the same inputs (caches warm after the first
run; the first run is printed too). Usage::

    .venv/bin/python bench/metrics_text.py [--pairs 2000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import median

VOCAB = (
    "the bank must hold capital against credit market and operational risk report its exposures to "
    "supervisor every quarter under article regulation requirement liquidity coverage ratio institutions "
    "shall apply weighted assets leverage own funds tier common equity deduction competent authority may "
    "require additional disclosure annual financial statements consolidated basis subsidiaries member states "
    "ensure that firms have robust governance arrangements including clear organisational structure"
).split()


def make_pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` (prediction, reference) pairs of 15-60 words; predictions reuse ~60% of the reference."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        reference = [rng.choice(VOCAB) for _ in range(rng.randint(15, 60))]
        prediction = [w if rng.random() < 0.6 else rng.choice(VOCAB) for w in reference]
        prediction = prediction[: max(5, int(len(prediction) * rng.uniform(0.7, 1.2)))]
        pairs.append((" ".join(prediction).capitalize() + ".", " ".join(reference).capitalize() + "."))
    return pairs


def rate(work: Callable[[], object], items: int, repeats: int) -> tuple[float, float]:
    """(median, first) items per second of ``work`` over ``repeats`` runs."""
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        rates.append(items / (time.perf_counter() - start))
    return median(rates), rates[0]


def _each(
    score: Callable[[str, str], object], pairs: Sequence[tuple[str, str]], swap: bool = False
) -> Callable[[], object]:
    """A run of ``score`` over every pair (``score(reference, prediction)`` when ``swap``)."""
    if swap:
        return lambda: [score(r, p) for p, r in pairs]
    return lambda: [score(p, r) for p, r in pairs]


def row(name: str, result: tuple[float, float], unit: str) -> None:
    med, first = result
    print(f"  {name:<44} {med:>10,.0f} {unit}   (first run {first:>9,.0f})", flush=True)


def bench_text(pairs: Sequence[tuple[str, str]], repeats: int, nltk_data: Path) -> None:
    from rouge_score import rouge_scorer

    from atalaia.metrics.text import TextOverlapScorer, bleu_score, rouge_scores, wordnet_available

    n = len(pairs)
    words = sum(len(p.split()) + len(r.split()) for p, r in pairs) / (2 * n)
    print(f"text overlap: {n} pairs, {words:.0f} words per text on average")
    types = ["rouge1", "rouge2", "rougeL"]
    package = {stem: rouge_scorer.RougeScorer(types, use_stemmer=stem) for stem in (True, False)}

    row("ROUGE (atalaia, stemmer)", rate(lambda: [rouge_scores(p, r) for p, r in pairs], n, repeats), "pairs/s")
    row(
        "ROUGE (atalaia, no stemmer)",
        rate(lambda: [rouge_scores(p, r, stemmer=False) for p, r in pairs], n, repeats),
        "pairs/s",
    )
    for stem, label in ((True, "stemmer"), (False, "no stemmer")):
        scorer = package[stem]
        row(f"ROUGE (rouge-score package, {label})", rate(_each(scorer.score, pairs, swap=True), n, repeats), "pairs/s")
    row("BLEU (sacrebleu sentence)", rate(lambda: [bleu_score(p, r) for p, r in pairs], n, repeats), "pairs/s")
    row(
        "ROUGE (stemmer) + BLEU",
        rate(lambda: [(rouge_scores(p, r), bleu_score(p, r)) for p, r in pairs], n, repeats),
        "pairs/s",
    )

    start = time.perf_counter()
    have_wordnet = wordnet_available(nltk_data)
    state = "loaded" if have_wordnet else "NOT available"
    print(f"  (WordNet {state} from {nltk_data} in {time.perf_counter() - start:.2f} s)")
    with tempfile.TemporaryDirectory() as empty:
        scorers = {"meteor_exact (fallback)": TextOverlapScorer(Path(empty))}
        if have_wordnet:
            scorers = {"meteor (WordNet)": TextOverlapScorer(nltk_data), **scorers}
        for label, scorer in scorers.items():
            meteor = scorer._meteor
            row(f"METEOR: {label}", rate(_each(meteor, pairs), n, repeats), "pairs/s")
        for label, scorer in scorers.items():
            row(
                f"TextOverlapScorer.score, {label.split()[0]}",
                rate(_each(scorer.score, pairs), n, repeats),
                "pairs/s",
            )


def bench_toxicity(pairs: Sequence[tuple[str, str]], repeats: int) -> None:
    from atalaia.metrics.toxicity import DetoxifyScorer, ProfanityCheckScorer
    from tests.helpers_toxicity import build_tiny_detoxify_checkpoint

    texts = [p for p, _ in pairs]
    n = len(texts)
    print(f"toxicity: {n} texts")
    profanity = ProfanityCheckScorer()
    row(
        f"alt-profanity-check, batches of {profanity.batch_size}",
        rate(lambda: profanity.score(texts), n, repeats),
        "texts/s",
    )
    single = texts[:500]
    row(
        "alt-profanity-check, one text per call",
        rate(lambda: [profanity.score([t]) for t in single], len(single), repeats),
        "texts/s",
    )

    import torch  # imported before the timings below, which would otherwise include it
    import transformers  # noqa: F401

    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        checkpoint, config_dir = build_tiny_detoxify_checkpoint(Path(folder))
        built = time.perf_counter() - start
        start = time.perf_counter()
        detoxify = DetoxifyScorer(checkpoint, config_dir)
        loaded = time.perf_counter() - start
        threads = torch.get_num_threads()
        print(f"  (tiny checkpoint built in {built:.2f} s, loaded in {loaded:.2f} s; torch threads {threads})")
        subset = texts[:1000]
        row(
            f"Detoxify tiny BERT, batches of {detoxify.batch_size}",
            rate(lambda: detoxify.score(subset), len(subset), repeats),
            "texts/s",
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--nltk-data", type=Path, default=None, help="default: ATALAIA_NLTK_DATA")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from atalaia.settings import get_settings

    nltk_data = args.nltk_data or get_settings().nltk_data
    assert nltk_data is not None  # Settings resolves its default
    pairs = make_pairs(args.pairs)
    bench_text(pairs, args.repeats, nltk_data)
    bench_toxicity(pairs, args.repeats)


if __name__ == "__main__":
    main()
