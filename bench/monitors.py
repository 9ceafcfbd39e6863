"""Benchmarks of the monitors: rule evaluation throughput and drift scenarios, one process.

1. **Rule evaluation**: synthetic :class:`~atalaia.events.MetricEvent` objects (the metric names
   of the default rule file plus the operational and text metrics every event carries, 3 model
   versions x 2 services) go through :class:`monitors.evaluator.RuleEvaluator` with the default
   rules, ``evaluate()`` once per batch of ``--batch`` metric events (the service evaluates after
   each Kafka poll, at most 5,000 records; at 5,000 events/s a poll brings a few hundred). Event
   time advances at 5,000 metric events/s; the windows are filled for ``--warmup-s`` seconds of
   event time, then ``--repeats`` consecutive segments of ``--seconds`` are timed: metric events/s
   on one core (median of the segments), the goal being >= 5,000. Parsing JSON into events is timed apart.
2. **Embedding drift**: real all-MiniLM-L6-v2 embeddings and the calibrated
   :class:`~atalaia.drift.MMDDriftDetector` with the worker's settings (reference = the first
   ``ATALAIA_DRIFT_REFERENCE_SIZE`` prompt embeddings, window 200, stride 50, the default target
   ARL and reference confidence), against the previous default (reference 500, target ARL 1,000,
   threshold ignoring the reference's own variance). Questions of
   ``data/qa/train.jsonl`` (212) are drawn **with replacement** to make 1,000-event and
   10,000-event streams; then questions of ``data/qa/off_topic.jsonl`` (70, also with
   replacement), either all of them off-topic or a quarter. Reported: events from the shift to
   the first alarm, and false alarms over 10,000 stationary events.
3. **Latency step**: lognormal latencies (median 800 ms, sigma 0.5), then 25 % or 50 % slower,
   with :func:`atalaia.drift.make_detector` defaults (Page-Hinkley two-sided and "up", ADWIN).
4. **Toxicity step**: the real offline scorer (alt-profanity-check) on prompts: train questions
   and the same questions made rude with 6 templates; the toxic share goes from 2 % to 5, 10, 20 %.
5. **Calibration** of the scalar detectors (``--calibrate N``): N independent streams per noise
   type (Gaussian, lognormal sigma 0.5, Student t with 4 degrees of freedom, Bernoulli 5 %),
   warm-up plus 10,000 stationary values: share of streams with a false alarm; and values from a
   step of 0.5, 1, 2 standard deviations (after 2,000 values) to the alarm. ``--grid`` also runs
   the alternative settings tabulated in the detectors' docstrings.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python bench/monitors.py --only embedding   # drift: ~2 min idle
    .venv/bin/python bench/monitors.py     # everything: ~3 min on the idle 2-core box (6 when cores are shared)
    .venv/bin/python bench/monitors.py --only calibrate --calibrate 1000 --grid   # docstring tables
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from atalaia.drift import MMDDriftDetector, ScalarDriftDetector, make_detector
from bench.common import median

ROOT = Path(__file__).resolve().parents[1]

SECTIONS = ("rules", "embedding", "latency", "toxicity", "calibrate")
STATIONARY = 10_000


def _fmt_delays(delays: list[int | None]) -> str:
    found = [d for d in delays if d is not None]
    missed = len(delays) - len(found)
    if not found:
        return "never"
    text = f"{median(found):.0f} ({min(found)}-{max(found)})"
    return text + (f", {missed} missed" if missed else "")


# --------------------------------------------------------------------------------------------
# 1. rule evaluation throughput


def bench_rules(repeats: int, batches: list[int], warmup_s: float, seconds: float, rate: float = 5000.0) -> None:
    from atalaia.events import MetricEvent, parse_event
    from atalaia.metrics.operational import OPERATIONAL_METRICS
    from monitors.evaluator import RuleEvaluator
    from monitors.rules import load_rules

    rules = load_rules(None)
    watched = {r.metric for r in rules}
    names = sorted(watched | set(OPERATIONAL_METRICS) | {"rougeL", "toxicity_prompt", "toxicity_response"})
    versions = ["chat@1", "chat@2", "chat@3"]
    services = ["api", "batch"]
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    step = timedelta(seconds=1.0 / rate)

    def values(rng: np.random.Generator, name: str, n: int) -> list[float]:
        if "latency" in name:
            return (800.0 * rng.lognormal(0.0, 0.5, n)).tolist()
        if name == "cost":
            return rng.uniform(0, 0.002, n).tolist()
        if "tokens" in name:
            return rng.integers(10, 400, n).astype(float).tolist()
        if name in ("cache_hit",) or name.endswith("_flag") or name.startswith("error"):
            return (rng.random(n) < 0.05).astype(float).tolist()
        return rng.random(n).tolist()

    def events(start: int, n: int, chunk: int = 50_000) -> Iterator[MetricEvent]:
        """Events ``start .. start + n - 1`` of one deterministic stream, made lazily (bounded memory)."""
        for c0 in range(start, start + n, chunk):
            c1 = min(c0 + chunk, start + n)
            rng = np.random.default_rng(c0)
            per_name = {name: iter(values(rng, name, (c1 - c0) // len(names) + 2)) for name in names}
            for i in range(c0, c1):
                source = uuid.UUID(int=i // len(names) + 1)
                name = names[i % len(names)]
                ts = t0 + i * step
                # model_construct: the bench times the evaluator, not pydantic validation.
                yield MetricEvent.model_construct(
                    event_id=MetricEvent.id_for(source, name),
                    ts=ts,
                    source_event_id=source,
                    source_ts=ts,
                    service=services[(i // len(names)) % 2],
                    model_version=versions[(i // (2 * len(names))) % 3],
                    name=name,
                    value=next(per_name[name]),
                    error=None,
                    labels={},
                    type="metric",
                    schema_version=1,
                )

    n_warm, n_timed = int(warmup_s * rate), int(seconds * rate)
    timed_all = list(events(n_warm, repeats * n_timed))  # the timed part is built before timing
    prune_every = int(10 * rate)
    print(f"\n## Rule evaluation — {len(rules)} default rules watching {sorted(watched)}")
    print(
        f"{len(names)} metric names in equal shares, {len(versions)} model versions x {len(services)} services; "
        f"event time at {rate:,.0f} metric events/s; windows filled with {warmup_s:g} s of event time ({n_warm:,} "
        f"events, evaluate() every 10 s), then {repeats} consecutive segments of {seconds:g} s ({n_timed:,} events) "
        "timed with evaluate() every `batch` events\n"
    )
    results: dict[int, list[float]] = {}
    split: dict[int, list[tuple[float, float]]] = {}  # (observe µs per event, evaluate ms per call)
    transitions = 0
    for batch in batches:
        rates = results[batch] = []
        parts = split[batch] = []
        ev = RuleEvaluator(rules)
        for i, e in enumerate(events(0, n_warm), start=1):
            ev.observe(e)
            if i % prune_every == 0:
                ev.evaluate(e.source_ts)
        for r in range(repeats):
            timed = timed_all[r * n_timed : (r + 1) * n_timed]
            eval_s, calls = 0.0, 0
            start = time.perf_counter()
            for i, e in enumerate(timed, start=1):
                ev.observe(e)
                if i % batch == 0:
                    t = time.perf_counter()
                    transitions += len(ev.evaluate(e.source_ts))
                    eval_s += time.perf_counter() - t
                    calls += 1
            total = time.perf_counter() - start
            rates.append(n_timed / total)
            parts.append((1e6 * (total - eval_s) / n_timed, 1e3 * eval_s / max(calls, 1)))
    # Parsing the wire format (the service does it before observe()).
    wire = [e.model_dump_json() for e in timed_all[:20_000]]
    start = time.perf_counter()
    for raw in wire:
        parse_event(raw, MetricEvent)
    parse_rate = len(wire) / (time.perf_counter() - start)
    print("| step | metric events/s (median) | goal | | observe µs/event, evaluate ms/call per segment |")
    print("|---|---|---|---|---|")
    for batch, rates in results.items():
        best = median(rates)
        runs = ", ".join(f"{r:,.0f}" for r in rates)
        verdict = "met" if best >= 5000 else "NOT met"
        parts = "; ".join(f"{o:.1f}, {e:.1f}" for o, e in split[batch])
        print(
            f"| observe + evaluate every {batch} events | {best:,.0f} | >= 5,000 | "
            f"{verdict} (x{best / 5000:.1f}; runs {runs}) | {parts} |"
        )
    print(f"| parse JSON -> MetricEvent | {parse_rate:,.0f} | | | |")
    slowest = min(median(r) for r in results.values())
    both = 1.0 / (1.0 / slowest + 1.0 / parse_rate)
    print(f"| parse + observe + evaluate (slowest batch) | {both:,.0f} | | | |")
    print(f"(alert transitions during the timed runs: {transitions})")


# --------------------------------------------------------------------------------------------
# 2. embedding drift


def _questions(path: Path) -> list[str]:
    return [json.loads(line)["question"] for line in path.read_text().splitlines() if line.strip()]


def bench_embedding(repeats: int, fa_streams: int) -> None:
    from atalaia.metrics.embedding import Embedder
    from atalaia.models.embedder import load_embedder
    from atalaia.settings import Settings

    fields = Settings.model_fields
    ref_size = int(fields["drift_reference_size"].default)
    window = int(fields["drift_window_size"].default)
    stride = int(fields["drift_stride"].default)
    target_arl = float(fields["drift_target_arl"].default)
    on_q = _questions(ROOT / "data/qa/train.jsonl")
    off_q = _questions(ROOT / "data/qa/off_topic.jsonl")
    t0 = time.perf_counter()
    embedder = Embedder(load_embedder())
    on = embedder.encode(on_q).astype(np.float64)
    off = embedder.encode(off_q).astype(np.float64)
    enc_s = time.perf_counter() - t0

    print(f"\n## Embedding drift — MiniLM embeddings, MMDDriftDetector (window {window}, stride {stride})")
    print(
        f"{len(on_q)} train questions and {len(off_q)} off-topic questions encoded in {enc_s:.1f} s (model load "
        "included). Streams draw them WITH replacement. As in consumers/drift.py the reference is the stream's "
        "first embeddings. Shift: 1,000 in-distribution events (more when the reference needs it, see the "
        f"column), then off-topic events (all, or a quarter), {repeats} seeds; false alarms: {fa_streams} streams "
        f"of reference + {STATIONARY:,} in-distribution events\n"
    )
    print(
        "| setting | false alarms in 10,000 stationary events (streams with any / tests) | in-distribution "
        "before the shift | events from shift to alarm, all off-topic | same, 25 % off-topic | ms per test |"
    )
    print("|---|---|---|---|---|---|")
    confidence = float(fields["drift_reference_confidence"].default)
    # (label, reference size, target ARL, reference confidence): None = the fixed-reference
    # calibration used before atalaia.drift.mmd_null (the previous default, for comparison).
    configs: list[tuple[str, int, float, float | None]] = [
        ("reference 500, target ARL 1,000, reference's variance ignored (previous default)", 500, 1000.0, None),
        (
            f"reference {ref_size}, target ARL {target_arl:g}, reference confidence {confidence:g} (**default**)",
            ref_size,
            target_arl,
            confidence,
        ),
    ]
    for label, ref_n, arl, conf in configs:

        def detector(ref_n: int = ref_n, arl: float = arl, conf: float | None = conf) -> MMDDriftDetector:
            return MMDDriftDetector(
                reference_size=ref_n,
                window_size=min(window, ref_n - 2),
                stride=stride,
                target_arl=arl,
                reference_confidence=conf,
                seed=0,
            )

        pre = max(1000, ref_n + window + 2 * stride)
        cells, before = [], 0
        for share in (1.0, 0.25):
            delays: list[int | None] = []
            for seed in range(repeats):
                rng = np.random.default_rng(500 + seed)
                det = detector()
                for x in on[rng.integers(0, len(on), pre)]:
                    det.update(x)
                    before += det.drift_detected
                delay = None
                for i in range(1, 1001):
                    pool = off if rng.random() < share else on
                    det.update(pool[rng.integers(0, len(pool))])
                    if det.drift_detected:
                        delay = i
                        break
                delays.append(delay)
            cells.append(_fmt_delays(delays))
        alarms, tests, streams_hit, test_s = 0, 0, 0, 0.0
        for seed in range(fa_streams):
            rng = np.random.default_rng(900 + seed)
            det = detector()
            hit = 0
            for x in on[rng.integers(0, len(on), ref_n + STATIONARY)]:
                n = det.n_tests
                t = time.perf_counter()
                det.update(x)
                if det.n_tests > n:
                    test_s += time.perf_counter() - t
                hit += det.drift_detected
            alarms += hit
            streams_hit += hit > 0
            tests += det.n_tests
        print(
            f"| {label} | **{alarms}** ({streams_hit} of {fa_streams} / {tests}) | {pre:,} (alarms: {before}) "
            f"| {cells[0]} | {cells[1]} | {1000 * test_s / max(tests, 1):.1f} |"
        )


# --------------------------------------------------------------------------------------------
# 3./4. scalar steps


DETECTORS: list[tuple[str, str, dict[str, Any]]] = [
    ("page_hinkley (defaults, two-sided)", "page_hinkley", {}),
    ('page_hinkley mode="up"', "page_hinkley", {"mode": "up"}),
    ("adwin (defaults)", "adwin", {}),
]


def _first_alarm(det: ScalarDriftDetector, values: np.ndarray) -> int | None:
    for i, x in enumerate(values.tolist(), start=1):
        det.update(x)
        if det.drift_detected:
            return i
    return None


def _count_alarms(det: ScalarDriftDetector, values: np.ndarray) -> int:
    n = 0
    for x in values.tolist():
        det.update(x)
        n += det.drift_detected
    return n


def scalar_scenario(
    title: str,
    note: str,
    draw: Callable[[np.random.Generator, int, float], np.ndarray],
    steps: list[tuple[str, float]],
    base: float,
    repeats: int,
    fa_streams: int,
) -> None:
    print(f"\n## {title}")
    big = np.random.default_rng(1)
    ref = draw(big, 200_000, base)
    sizes = ", ".join(f"{s}: {(draw(big, 200_000, v).mean() - ref.mean()) / ref.std():+.2f} sd" for s, v in steps)
    print(f"{note}. Step sizes: {sizes}\n")
    head = " | ".join(f"{s}: events to alarm, median (min-max)" for s, _ in steps)
    print(f"| detector | false alarms in {fa_streams} x {STATIONARY:,} stationary events | {head} |")
    print("|---|---|" + "---|" * len(steps))
    for label, kind, params in DETECTORS:
        warm = int(make_detector(kind, **params).params()["min_instances"])
        fa = 0
        for s in range(fa_streams):
            rng = np.random.default_rng(10_000 + s)
            fa += _count_alarms(make_detector(kind, **params), draw(rng, warm + STATIONARY, base))
        cells = []
        for _, level in steps:
            delays: list[int | None] = []
            for s in range(repeats):
                rng = np.random.default_rng(20_000 + s)
                det = make_detector(kind, **params)
                early = _count_alarms(det, draw(rng, 1000, base))
                delays.append(_first_alarm(det, draw(rng, 2000, level)))
                fa += early
            cells.append(_fmt_delays(delays))
        print(f"| {label} | {fa} | " + " | ".join(cells) + " |")


def bench_latency(repeats: int, fa_streams: int) -> None:
    def draw(rng: np.random.Generator, n: int, factor: float) -> np.ndarray:
        return factor * 800.0 * rng.lognormal(0.0, 0.5, size=n)

    scalar_scenario(
        "Latency step — synthetic lognormal latencies (median 800 ms, sigma 0.5)",
        f"{repeats} streams of 1,000 stationary values then the step (false alarms in those 1,000 values are "
        "added to the stationary count)",
        draw,
        [("x1.25", 1.25), ("x1.5", 1.5)],
        1.0,
        repeats,
        fa_streams,
    )


def bench_toxicity(repeats: int, fa_streams: int) -> None:
    from atalaia.metrics.toxicity import ProfanityCheckScorer

    clean_q = _questions(ROOT / "data/qa/train.jsonl")
    templates = [
        "{q} Answer me, you useless idiot.",
        "What the hell is wrong with this company? {q}",
        "Stupid bot. {q}",
        "{q} Don't give me crap this time.",
        "Listen, moron: {q}",
        "{q} Shut up and answer, damn it.",
    ]
    scorer = ProfanityCheckScorer()
    clean = np.array(scorer.score(clean_q))
    toxic = np.array(scorer.score([t.format(q=q) for t in templates for q in clean_q]))

    def draw(rng: np.random.Generator, n: int, share: float) -> np.ndarray:
        is_toxic = rng.random(n) < share
        return np.where(is_toxic, toxic[rng.integers(0, len(toxic), n)], clean[rng.integers(0, len(clean), n)])

    scalar_scenario(
        "Toxicity step — real alt-profanity-check scores of prompts",
        f"clean: the {len(clean_q)} train questions (score median {np.median(clean):.3f}, p90 "
        f"{np.percentile(clean, 90):.3f}); toxic: the same made rude with {len(templates)} templates (median "
        f"{np.median(toxic):.3f}); prompts drawn with replacement; toxic share 2 % then 5 %, 10 % or 20 %",
        draw,
        [("2% -> 5%", 0.05), ("2% -> 10%", 0.10), ("2% -> 20%", 0.20)],
        0.02,
        repeats,
        fa_streams,
    )


# --------------------------------------------------------------------------------------------
# 5. calibration


NOISES: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    "Gaussian": lambda rng, n: rng.normal(size=n),
    "lognormal 0.5": lambda rng, n: rng.lognormal(0.0, 0.5, size=n),
    "Student t4": lambda rng, n: rng.standard_t(4, size=n),
    "Bernoulli 5%": lambda rng, n: (rng.random(n) < 0.05).astype(float),
}
GRID: dict[str, list[dict[str, Any]]] = {
    "page_hinkley": [
        {},
        {"delta": 0.15, "threshold": 50.0},
        {"delta": 0.15, "threshold": 60.0},
        {"delta": 0.25, "threshold": 40.0},
        {"delta": 0.10, "threshold": 60.0},
        {"delta": 0.25, "threshold": 25.0},
    ],
    "adwin": [{}, {"delta": 0.0005}, {"delta": 0.001}, {"delta": 0.002}, {"delta": 0.02}],
}


def bench_calibrate(streams: int, grid: bool) -> None:
    print(f"\n## Calibration of the scalar detectors — {streams} streams per noise type and setting")
    print(
        f"false alarms: share of streams (warm-up + {STATIONARY:,} stationary values) with >= 1 alarm; "
        "delays: values from a step of k sd (after 2,000 values) to the alarm, Gaussian noise, "
        f"{max(streams // 2, 1)} streams, median (95th percentile)\n"
    )
    print("| detector | " + " | ".join(NOISES) + " | step 0.5 sd | step 1 sd | step 2 sd | s |")
    print("|---|" + "---|" * (len(NOISES) + 4))
    for kind, settings in GRID.items():
        for params in settings if grid else settings[:1]:
            start = time.perf_counter()
            warm = int(make_detector(kind, **params).params()["min_instances"])
            shares = []
            for noise_i, draw in enumerate(NOISES.values()):
                hit = 0
                for s in range(streams):
                    rng = np.random.default_rng([noise_i, s])
                    hit += _count_alarms(make_detector(kind, **params), draw(rng, warm + STATIONARY)) > 0
                shares.append(hit / streams)
            delays = []
            for k in (0.5, 1.0, 2.0):
                found: list[int] = []
                for s in range(max(streams // 2, 1)):
                    rng = np.random.default_rng([99, s])
                    x = rng.normal(size=4000)
                    x[2000:] += k
                    det = make_detector(kind, **params)
                    _count_alarms(det, x[:2000])
                    d = _first_alarm(det, x[2000:])
                    found.append(d if d is not None else 10**9)
                p50, p95 = np.percentile(found, 50), np.percentile(found, 95)
                delays.append(f"{p50:.0f} ({p95:.0f})" if p95 < 10**8 else f"{p50:.0f} (missed)")
            label = f"{kind} {json.dumps(params) if params else '(defaults)'}"
            print(
                f"| {label} | "
                + " | ".join(f"{s:.3f}" for s in shares)
                + " | "
                + " | ".join(delays)
                + f" | {time.perf_counter() - start:.0f} |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=SECTIONS, action="append", help="run only these sections (repeatable)")
    parser.add_argument("--repeats", type=int, default=3, help="timing repeats and shift streams (default 3)")
    parser.add_argument(
        "--batch", default="5000,500", help="metric events per evaluate() call, comma-separated (default 5000,500)"
    )
    parser.add_argument("--warmup-s", type=float, default=60.0, help="event-time seconds to fill the windows")
    parser.add_argument("--seconds", type=float, default=10.0, help="event-time seconds per timed segment")
    parser.add_argument("--shift-streams", type=int, default=20, help="streams per step scenario (default 20)")
    parser.add_argument("--fa-streams", type=int, default=20, help="10,000-event stationary streams (default 20)")
    parser.add_argument("--mmd-fa-streams", type=int, default=20, help="the same for the MMD detector (default 20)")
    parser.add_argument("--calibrate", type=int, default=100, help="streams per noise type (default 100)")
    parser.add_argument("--grid", action="store_true", help="calibrate the alternative settings too")
    args = parser.parse_args()
    only = set(args.only or SECTIONS)
    started = time.perf_counter()
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    print(f"# bench/monitors.py — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, commit {commit}")
    if "rules" in only:
        bench_rules(args.repeats, [int(b) for b in args.batch.split(",")], args.warmup_s, args.seconds)
    if "embedding" in only:
        bench_embedding(max(args.shift_streams // 2, 1), args.mmd_fa_streams)
    if "latency" in only:
        bench_latency(args.shift_streams, args.fa_streams)
    if "toxicity" in only:
        bench_toxicity(args.shift_streams, args.fa_streams)
    if "calibrate" in only and args.calibrate > 0:
        bench_calibrate(args.calibrate, args.grid)
    print(f"\n(total {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
