"""The scoring budget under a rate above capacity: lag without a budget (old) and with it (new).

One process, real models: events of ``bench/metrics.py`` arrive at ``--rate`` per second (their
``ts`` is their arrival time); a loop like the worker's scores what has arrived, up to ``BATCH`` events
per batch, with :class:`consumers.scoring.BatchScorer`. ``old`` is ``ATALAIA_SCORING_BUDGET=0``
(every group scores every event, as before), ``new`` the default budget. Both modes run in the
same process one after the other, each for ``--seconds``. Reported per mode: events scored, the
delay from arrival to scored (p50/p95), the backlog's age at the end (lag), and the fraction of
each expensive group at the end. Usage::

    .venv/bin/python bench/budget.py [--groups operational,toxicity,perplexity] [--rate 20] [--seconds 60]
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import pct
from bench.metrics import _events

#: Most events per scoring call (the worker takes what arrived within 0.5 s, up to 200; few at these rates).
BATCH = 10


def run(mode: str, groups: str, rate: float, seconds: float, budget: float) -> dict[str, object]:
    """Feed ``rate`` events/s for ``seconds`` into a scorer; return what the mode achieved."""
    from atalaia.settings import get_settings
    from consumers.scoring import BatchScorer

    settings = get_settings().model_copy(update={"metric_groups": groups, "scoring_budget": budget})
    scorer = BatchScorer(settings)
    scorer.warm_up()
    pool = _events(int(rate * seconds) + 1)
    start = time.time()
    t0 = datetime.fromtimestamp(start, UTC)
    for i, ev in enumerate(pool):  # event i arrives at start + i / rate
        ev.ts = t0 + timedelta(seconds=i / rate)
    done = 0
    delays: list[float] = []
    expensive: dict[str, int] = {}
    while time.time() - start < seconds:
        now = time.time()
        arrived = min(len(pool), int((now - start) * rate) + 1)
        batch = pool[done : min(arrived, done + BATCH)]
        if not batch:
            time.sleep(0.05)
            continue
        scored = scorer.score(batch)
        finished = time.time()
        delays += [finished - ev.ts.timestamp() for ev in batch]
        for m in scored.metrics:
            if m.sample_fraction < 1:
                expensive[m.name] = expensive.get(m.name, 0) + 1
        done += len(batch)
    end = time.time()
    arrived = min(len(pool), int((end - start) * rate) + 1)
    lag = end - pool[done].ts.timestamp() if done < arrived else 0.0
    return {
        "mode": mode,
        "arrived": arrived,
        "scored": done,
        "delay_p50_s": pct(delays, 50),
        "delay_p95_s": pct(delays, 95),
        "lag_end_s": lag,
        "fractions": {g.name: round(scorer.fraction(g.name), 3) for g in scorer.active if g.cost == "expensive"},
        "costs_ms": {k: round(v * 1000, 2) for k, v in scorer.budget.costs.items()},
        "sampled_rows": expensive,
    }


def main() -> None:
    """Run old (no budget) and new (the default budget) one after the other and print a table."""
    from atalaia.settings import Settings

    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--groups", default="operational,toxicity,perplexity")
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--budget", type=float, default=Settings.model_fields["scoring_budget"].default)
    args = parser.parse_args()
    results = []
    for mode, budget in (("old (budget off)", 0.0), (f"new (budget {args.budget:g})", args.budget)):
        results.append(run(mode, args.groups, args.rate, args.seconds, budget))
        print(results[-1], flush=True)
    print(f"groups {args.groups}, {args.rate:g} events/s for {args.seconds:g} s each")
    print("| mode | arrived | scored | arrival→scored p50 / p95 (s) | lag at end (s) | fractions at end |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['mode']} | {r['arrived']} | {r['scored']} | {r['delay_p50_s']:.1f} / {r['delay_p95_s']:.1f} "
            f"| {r['lag_end_s']:.1f} | {r['fractions']} |"
        )
    for r in results:
        print(r["mode"], "cost ms/event:", r["costs_ms"], "sampled rows:", r["sampled_rows"])


if __name__ == "__main__":
    main()
