"""Where a worker's batch goes: each step's share, the old write path and the new side by side.

One 200-event batch (the worker's ``BATCH_SIZE``) with the operational metrics, stepped through
in process, as ``consumers/worker.py`` does it:

1. parse: the raw Kafka values into ``InferenceEvent`` (``split_valid``'s ``parse_event``);
2. score: ``BatchScorer.score`` (``--groups``, default ``operational``);
3. write: one transaction storing events and metrics — *old*: the multi-row
   ``INSERT … VALUES … RETURNING`` (``method="insert"``); *new*: ``COPY`` into a staging table
   then ``INSERT … SELECT … ON CONFLICT DO NOTHING`` on PostgreSQL, ``executemany`` on SQLite;
4. publish: serialising the metric messages — *old*: one ``MetricEvent`` per metric;
   *new*: ``MetricBatchEvent.pack`` (one message per 50 scored events). Messages per batch are
   printed too: each costs a faust ``send`` on top of its serialisation.

Old and new alternate batch by batch in the same process, on fresh event ids, so machine noise
hits both alike. Usage::

    ATALAIA_TEST_DATABASE_URL=postgresql+psycopg://... .venv/bin/python bench/write_path.py
    .venv/bin/python bench/write_path.py --database-url sqlite:////tmp/w.db --batches 20
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

STEPS = ("parse", "score", "write", "publish")


def _raw_batch(n: int, reference: bool = False) -> list[bytes]:
    from atalaia.events import ChatMessage, InferenceEvent

    return [
        InferenceEvent(
            service="bench",
            model_version="write-path",
            messages=[ChatMessage(role="user", content=f"How many vacation days do I get in year {i}?")],
            response="Employees get 30 working days of paid vacation a year; see section 4.2.",
            latency_ms=100.0 + i % 50,
            prompt_tokens=15,
            completion_tokens=18,
            cost=0.00003,
            # With the text groups on (--groups), every event has a reference answer to score against.
            reference="Employees get 30 working days of paid vacation per year." if reference else None,
        ).to_json()
        for i in range(n)
    ]


def one_batch(engine: Any, scorer: Any, raw: list[bytes], new: bool) -> tuple[dict[str, float], int]:
    """Seconds of each step for one batch, and the number of metric messages it publishes."""
    from atalaia.events import InferenceEvent, MetricBatchEvent, parse_event
    from atalaia.storage import repository
    from atalaia.storage import tables as t

    method = "auto" if new else "insert"
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    events = [parse_event(r, InferenceEvent) for r in raw]
    t1 = time.perf_counter()
    scored = scorer.score(events)
    t2 = time.perf_counter()
    with engine.begin() as conn:
        now = repository.utcnow()
        repository.insert_ignoring_duplicates(
            conn, t.inference_events, [repository.inference_row(e, now) for e in events], method=method
        )
        repository.insert_ignoring_duplicates(
            conn, t.metrics, [repository.metric_row(m, now) for m in scored.metrics], method=method
        )
    t3 = time.perf_counter()
    if new:
        messages = [value for _, value in MetricBatchEvent.pack_json(scored.metrics)]
    else:
        messages = [m.to_json() for m in scored.metrics]
    t4 = time.perf_counter()
    times = {"parse": t1 - t0, "score": t2 - t1, "write": t3 - t2, "publish": t4 - t3}
    return times, len(messages)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default=os.environ.get("ATALAIA_TEST_DATABASE_URL", ""))
    parser.add_argument("--batches", type=int, default=30, help="batches of each kind (default 30)")
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--groups", default="operational", help="metric groups scored (default operational)")
    args = parser.parse_args()

    from sqlalchemy import create_engine, text

    from atalaia.settings import load_settings
    from atalaia.storage.db import upgrade
    from consumers.scoring import BatchScorer

    url = args.database_url or f"sqlite:///{tempfile.mkdtemp(prefix='atalaia-write-')}/w.db"
    upgrade(url)
    engine = create_engine(url)
    with engine.begin() as conn:  # a clean slate: the bench's rows only
        conn.execute(text("DELETE FROM metrics WHERE model_version = 'write-path'"))
        conn.execute(text("DELETE FROM inference_events WHERE model_version = 'write-path'"))
    settings = load_settings(metric_groups=args.groups)
    scorer = BatchScorer(settings)
    scorer.warm_up()
    reference = bool({"text", "meteor"} & settings.enabled_groups)
    results: dict[bool, list[dict[str, float]]] = {False: [], True: []}
    messages: dict[bool, int] = {}
    one_batch(engine, scorer, _raw_batch(args.batch_size, reference), True)  # warm caches and connections
    one_batch(engine, scorer, _raw_batch(args.batch_size, reference), False)
    for _ in range(args.batches):
        for new in (False, True):
            times, messages[new] = one_batch(engine, scorer, _raw_batch(args.batch_size, reference), new)
            results[new].append(times)
    print(
        f"bench/write_path.py: {engine.dialect.name}, {args.batch_size}-event batches, groups {args.groups}, "
        f"{args.batches} batches each, medians"
    )
    print()
    print("| step | old ms/batch | old share | new ms/batch | new share |")
    print("|---|---|---|---|---|")
    med = {new: {s: statistics.median(r[s] for r in results[new]) * 1000 for s in STEPS} for new in results}
    total = {new: sum(med[new].values()) for new in med}
    for step in STEPS:
        print(
            f"| {step} | {med[False][step]:.1f} | {med[False][step] / total[False]:.0%} "
            f"| {med[True][step]:.1f} | {med[True][step] / total[True]:.0%} |"
        )
    print(f"| **total** | **{total[False]:.1f}** | | **{total[True]:.1f}** | |")
    costs = {g: f"{c * 1000:.3f}" for g, c in scorer.budget.costs.items()}
    print(f"\nscoring CPU ms per scored event, by group: {costs}; fractions at the end: {scorer.budget.fractions()}")
    print()
    for new in (False, True):
        rate = args.batch_size / total[new] * 1000
        print(
            f"{'new' if new else 'old'}: {rate:,.0f} events/s through these steps, "
            f"{messages[new]} metric messages/batch"
        )
    print(
        f"write step: {med[False]['write'] / med[True]['write']:.1f}x faster; "
        f"all steps: {total[False] / total[True]:.1f}x"
    )


if __name__ == "__main__":
    main()
