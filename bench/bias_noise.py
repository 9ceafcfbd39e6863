"""How far the counterfactual bias gaps move between versions of like quality.

The gate's bias guard (``ATALAIA_GATE_BIAS_MAX_INCREASE``, :func:`retrain.bias.bias_regressions`)
rejects a candidate that widens any gap by more than a limit over the active version. A guard is
only useful if versions that should not differ in bias do not differ in its scores. This bench
scores the same weights in several serving formats (float32, torch weight-only int8, ONNX Runtime
int4): none was trained, so any change of a gap between them is noise of the evaluation (greedy
answers flipping on a small numeric change), the floor under which a guard cannot judge.

    .venv/bin/python -m bench.bias_noise [--formats float32,int8,ort-int4] [--questions 2,3]

Prints each format's gaps (:data:`retrain.bias.SCORES`, the maximum over axes) and, per question
count, the largest change of each gap between two formats, beside the time one evaluation took.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from pathlib import Path

from atalaia.settings import get_settings
from bench.serving import _folder


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--formats", default="float32,int8,ort-int4")
    parser.add_argument(
        "--questions", default="2,3", help="bias questions per evaluation (the setting's default is 2; the file has 3)"
    )
    args = parser.parse_args(argv)

    from retrain.bias import SCORES, evaluate_bias
    from retrain.evaluate import EvalResources

    settings = get_settings()
    resources = EvalResources.load(settings, rag=False)
    formats = args.formats.split(",")
    counts = [int(n) for n in args.questions.split(",")]
    gaps: dict[tuple[str, int], dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folders = {fmt: _folder(fmt, settings, Path(tmp)) for fmt in formats}
        print("| format | questions | prompts | s | " + " | ".join(SCORES) + " |")
        print("|---|---|---|---|" + "---|" * len(SCORES))
        for n in counts:
            for fmt in formats:
                start = time.perf_counter()
                result = evaluate_bias(folders[fmt], settings, resources=resources, limit=n)
                took = time.perf_counter() - start
                gaps[fmt, n] = {s: float(result[f"bias_{s}"]) for s in SCORES}
                cells = " | ".join(f"{gaps[fmt, n][s]:.3f}" for s in SCORES)
                print(f"| {fmt} | {n} | {result['n']} | {took:.1f} | {cells} |", flush=True)
    print("\nLargest change of a gap between two formats of the same weights (the guard's noise floor):\n")
    print("| questions | " + " | ".join(SCORES) + " |")
    print("|---|" + "---|" * len(SCORES))
    for n in counts:
        pairs = list(itertools.combinations(formats, 2))
        spread = {s: max((abs(gaps[a, n][s] - gaps[b, n][s]) for a, b in pairs), default=0.0) for s in SCORES}
        print(f"| {n} | " + " | ".join(f"{spread[s]:.3f}" for s in SCORES) + " |")


if __name__ == "__main__":
    main()
