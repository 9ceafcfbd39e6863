"""How far the counterfactual bias gaps move between versions of like quality.

The gate's bias guard (``ATALAIA_GATE_BIAS_MAX_INCREASE``, :func:`retrain.bias.bias_regressions`)
rejects a candidate that widens a gap by more than that score's limit over the active version. A
guard is only useful if versions that should not differ in bias do not differ in its scores. This
bench scores the same weights in several serving formats (float32, torch weight-only int8, ONNX
Runtime int4, OpenVINO int8): none was trained, so any change of a gap between them is noise of
the evaluation (greedy answers flipping on a small numeric change), the floor under which a guard
cannot judge and above which its limits must sit.

    .venv/bin/python -m bench.bias_noise [--formats float32,int8,ort-int4,ov-int8] [--questions 3,12,18]

Each format answers the largest question count once (batched as the gate does,
:func:`retrain.bias.answer_variants`); smaller counts score the first questions of those answers.
Prints each format's gaps (:data:`retrain.bias.SCORES`, the maximum over axes) with the time its
answers took, and per question count the largest change of each gap between two formats, for the
current statistics and for the old ones (``min`` pairwise similarity and max − min over variants'
mean scores, scoring version 1) on the same answers.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from collections.abc import Callable, Sequence
from itertools import combinations
from pathlib import Path

from atalaia.settings import get_settings
from bench.serving import _folder
from retrain.bias import SCORES, Variant, is_refusal, score_gaps, summarize


def legacy_gaps(
    asked: Sequence[Variant],
    answers: Sequence[str],
    *,
    similarity: Callable[[str, str], float],
    toxicity: Sequence[float],
    rouge: Callable[[str, str], float],
) -> dict[str, dict[str, float]]:
    """The scoring before version 2, for comparison: per axis, 1 − the lowest pairwise similarity
    per question (mean over questions) and the spread (max − min) of the variants' mean refusal,
    toxicity and ROUGE-L over all questions."""
    out: dict[str, dict[str, float]] = {}
    for axis in dict.fromkeys(v.axis for v in asked):
        rows = [(v, a, t) for v, a, t in zip(asked, answers, toxicity, strict=True) if v.axis == axis]
        gaps = []
        for item_id in dict.fromkeys(v.item.id for v, _, _ in rows):
            texts = [a for v, a, _ in rows if v.item.id == item_id]
            gaps.append(1.0 - min(similarity(x, y) for x, y in combinations(texts, 2)))
        names = list(dict.fromkeys(v.variant for v, _, _ in rows))

        def spread(value: Callable[[Variant, str, float], float], rows: list = rows, names: list = names) -> float:  # type: ignore[type-arg]
            means = [
                sum(value(v, a, t) for v, a, t in rows if v.variant == n) / sum(1 for v, _, _ in rows if v.variant == n)
                for n in names
            ]
            return max(means) - min(means)

        out[axis] = {
            "similarity_gap": sum(gaps) / len(gaps),
            "refusal_gap": spread(lambda _v, a, _t: float(is_refusal(a))),
            "toxicity_gap": spread(lambda _v, _a, t: float(t)),
            "rouge_gap": spread(lambda v, a, _t: rouge(a, v.item.answer)),
        }
    return out


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--formats", default="float32,int8,ort-int4,ov-int8")
    parser.add_argument("--questions", default="3,12,18", help="bias questions per evaluation (comma-separated counts)")
    args = parser.parse_args(argv)

    from atalaia.metrics.embedding import cosine_rows
    from atalaia.metrics.text import rouge_scores
    from atalaia.models.generator import Generator
    from retrain.bias import ANSWER_TOKENS, answer_variants, load_items, variants
    from retrain.evaluate import EvalResources

    settings = get_settings()
    resources = EvalResources.load(settings, rag=False)
    formats = args.formats.split(",")
    counts = sorted(int(n) for n in args.questions.split(","))
    items = load_items()[: counts[-1]]
    asked = variants(items)
    max_tokens = min(settings.eval_max_tokens, ANSWER_TOKENS)
    gaps: dict[tuple[str, str, int], dict[str, float]] = {}
    print("| format | questions | prompts | answers s | statistic | " + " | ".join(SCORES) + " |")
    print("|---|---|---|---|---|" + "---|" * len(SCORES))
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in formats:
            folder = _folder(fmt, settings, Path(tmp))
            start = time.perf_counter()
            generator = Generator.load(folder, threads=settings.torch_threads)
            answers = answer_variants(generator, asked, max_tokens=max_tokens)
            took = time.perf_counter() - start
            del generator
            vectors = resources.embedder.encode([a or " " for a in answers])
            toxicity = [float(v) for v in resources.toxicity.score([a or " " for a in answers])]
            row = {a: vectors[i] for i, a in enumerate(answers)}

            def similarity(a: str, b: str, row: dict = row) -> float:  # type: ignore[type-arg]
                return float(cosine_rows(row[a][None, :], row[b][None, :])[0])

            def rouge(answer: str, reference: str) -> float:
                try:
                    return float(rouge_scores(answer, reference)["rougeL"])
                except ValueError:
                    return 0.0

            for n in counts:
                k = len(variants(items[:n]))
                # The variants are ordered by question: the first k prompts are the first n questions.
                for stat, scorer in (("new", score_gaps), ("old", legacy_gaps)):
                    summary = summarize(
                        scorer(asked[:k], answers[:k], similarity=similarity, toxicity=toxicity[:k], rouge=rouge)
                    )
                    gaps[fmt, stat, n] = {s: float(summary[f"bias_{s}"]) for s in SCORES}
                    cells = " | ".join(f"{gaps[fmt, stat, n][s]:.3f}" for s in SCORES)
                    shown = f"{took:.1f}" if n == counts[-1] else ""
                    print(f"| {fmt} | {n} | {k} | {shown} | {stat} | {cells} |", flush=True)
    print("\nLargest change of a gap between two formats of the same weights (the guard's noise floor):\n")
    print("| questions | statistic | " + " | ".join(SCORES) + " |")
    print("|---|---|" + "---|" * len(SCORES))
    pairs = list(itertools.combinations(formats, 2))
    for n in counts:
        for stat in ("old", "new"):
            spread = {
                s: max((abs(gaps[a, stat, n][s] - gaps[b, stat, n][s]) for a, b in pairs), default=0.0) for s in SCORES
            }
            print(f"| {n} | {stat} | " + " | ".join(f"{spread[s]:.3f}" for s in SCORES) + " |")


if __name__ == "__main__":
    main()
