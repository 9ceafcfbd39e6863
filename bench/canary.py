"""The canary's decisions on simulated live streams: the old before/after threshold vs the
sequential test on a traffic split, both looked at every ``--look-every`` requests.

Per-answer ROUGE-L is drawn from a normal distribution (parent mean 0.4, sd 0.2); the candidate's
mean is the parent's (equal), 10 % below (exactly at the margin ``ATALAIA_CANARY_MAX_DROP``), or
30 % below (clearly worse). Old: :func:`retrain.canary.compare` of the new version's first
samples with ``--baseline`` samples of its parent (drawn from the same distribution: the old
canary's best case, where the parent's earlier window is not the degraded one), the new version
taking all requests; it stops at the first ``rollback`` and otherwise ends in ``pass``. New:
:func:`retrain.canary.concurrent_compare` on a split (``--share`` of requests to the candidate),
both arms from the same period, stopping at ``promote``/``rollback``; no verdict by the end, or
once both arms have ``--max-samples`` (the sample budget, ``ATALAIA_CANARY_MAX_SAMPLES``), is
``timeout`` (the parent is kept).

Usage::

    python -m bench.canary --streams 200
"""

from __future__ import annotations

import argparse
import random
import statistics

from retrain.canary import compare, concurrent_compare

MAX_DROP, MAX_LATENCY_RATIO, MAX_TOXICITY_INCREASE = 0.1, 1.5, 0.05


def _old(
    rng: random.Random, cand_mean: float, total: int, look: int, baseline: int, min_events: int
) -> tuple[str, int]:
    base = {"rougeL": [rng.gauss(0.4, 0.2) for _ in range(baseline)]}
    live: list[float] = []
    for n in range(look, total + 1, look):
        live.extend(rng.gauss(cand_mean, 0.2) for _ in range(look))
        if (
            compare(
                {"rougeL": live},
                base,
                min_events=min_events,
                max_drop=MAX_DROP,
                max_latency_ratio=MAX_LATENCY_RATIO,
                max_toxicity_increase=MAX_TOXICITY_INCREASE,
            ).decision
            == "rollback"
        ):
            return "rollback", n
    return "pass", total


def _new(
    rng: random.Random,
    cand_mean: float,
    total: int,
    look: int,
    share: float,
    min_events: int,
    max_samples: int | None = None,
) -> tuple[str, int]:
    cand: list[float] = []
    par: list[float] = []
    for n in range(look, total + 1, look):
        for _ in range(look):
            if rng.random() < share:
                cand.append(rng.gauss(cand_mean, 0.2))
            else:
                par.append(rng.gauss(0.4, 0.2))
        verdict = concurrent_compare(
            {"rougeL": cand},
            {"rougeL": par},
            min_events=min_events,
            alpha=0.05,
            max_drop=MAX_DROP,
            max_latency_ratio=MAX_LATENCY_RATIO,
            max_toxicity_increase=MAX_TOXICITY_INCREASE,
            max_samples=max_samples,
        ).decision
        if verdict in ("promote", "rollback", "timeout"):
            return verdict, n
    return "timeout", total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--requests", type=int, default=3000, help="requests per stream")
    parser.add_argument("--look-every", type=int, default=50)
    parser.add_argument("--share", type=float, default=0.2)
    parser.add_argument("--baseline", type=int, default=500, help="old canary: parent samples")
    parser.add_argument("--min-events", type=int, default=30)
    parser.add_argument("--max-samples", type=int, default=None, help="new canary: sample budget per arm")
    args = parser.parse_args()
    print("| candidate | canary | promote/pass | rollback | timeout | median requests to promote or rollback |")
    print("|---|---|---|---|---|---|")
    for label, mean in (("equal", 0.4), ("at the margin (-10 %)", 0.36), ("worse (-30 %)", 0.28)):
        for name in ("old: before/after", "new: split, sequential"):
            rng = random.Random(7)
            outcomes = [
                _old(rng, mean, args.requests, args.look_every, args.baseline, args.min_events)
                if name.startswith("old")
                else _new(rng, mean, args.requests, args.look_every, args.share, args.min_events, args.max_samples)
                for _ in range(args.streams)
            ]
            counts = {
                k: sum(o == k for o, _ in outcomes) / args.streams for k in ("promote", "pass", "rollback", "timeout")
            }
            decided = [n for o, n in outcomes if o in ("promote", "rollback")] or [args.requests]
            kept, rolled, timeout = counts["promote"] + counts["pass"], counts["rollback"], counts["timeout"]
            print(
                f"| {label} | {name} | {100 * kept:.1f} % | {100 * rolled:.1f} % | {100 * timeout:.1f} % | "
                f"{statistics.median(decided):.0f} |"
            )


if __name__ == "__main__":
    main()
