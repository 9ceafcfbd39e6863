"""The worker's window aggregation on PostgreSQL: old (every metric row read into Python) against
new (aggregated by the server), side by side, and what each does to a scoring thread beside it.

The worker runs ``consumers.windows.materialize`` every 10 s in a thread while its scoring
thread scores the next batch. At 200 events/s with ~20 metrics per event, the two windows each
pass reads hold ~480,000 rows. This bench stores that many metric rows in a private table space
of the test database (two closed 1-minute windows), then, alternating old and new:

1. times one aggregation pass alone (wall and this process's CPU seconds: the CPU the worker's
   own interpreter spends, under its GIL);
2. runs the pass in a thread while this thread scores METEOR pairs (as the worker's scoring
   thread does), and reports the METEOR milliseconds per pair during the pass against alone.

Usage::

    ATALAIA_TEST_DATABASE_URL=postgresql+psycopg://... .venv/bin/python bench/materialize.py
    .venv/bin/python bench/materialize.py --database-url postgresql+psycopg://... --rows 480000 --repeats 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

NAMES = [f"metric_{i}" for i in range(20)]


def _store(engine: Any, rows: int, start: datetime) -> None:
    from atalaia.storage import tables as t
    from atalaia.storage.repository import insert_ignoring_duplicates

    now = datetime.now(UTC)
    per_event = len(NAMES)
    events = rows // per_event
    batch: list[dict[str, Any]] = []
    for i in range(events):
        ts = start + timedelta(seconds=120 * i / events)
        event_id = str(uuid.uuid4())
        for j, name in enumerate(NAMES):
            batch.append(
                {
                    "event_id": event_id,
                    "name": name,
                    "value": float((i * 7 + j) % 997),
                    "error": None,
                    "labels": None,
                    "service": "bench",
                    "model_version": "materialize@1",
                    "ts": ts,
                    "created_at": now,
                    "sample_fraction": 1.0 if j % 3 else 0.25,
                }
            )
        if len(batch) >= 20_000:
            with engine.begin() as conn:
                insert_ignoring_duplicates(conn, t.metrics, batch)
            batch = []
    if batch:
        with engine.begin() as conn:
            insert_ignoring_duplicates(conn, t.metrics, batch)


def _pass(engine: Any, new: bool, start: datetime) -> int:
    from consumers.windows import _aggregate_in_postgres, _aggregate_in_python

    aggregate = _aggregate_in_postgres if new else _aggregate_in_python
    with engine.connect() as conn:
        return len(aggregate(conn, 60, start, start + timedelta(seconds=120)))


def _meteor_ms(score: Any, seconds: float | None, until: threading.Event | None = None) -> float:
    """Median ms per METEOR pair, for ``seconds`` or until ``until`` is set."""
    pair = (
        "Employees get 30 working days of paid vacation a year; see section 4.2.",
        "Employees get 30 working days of paid vacation per year.",
    )
    times = []
    t_end = time.perf_counter() + (seconds or 1e9)
    while time.perf_counter() < t_end and not (until is not None and until.is_set()):
        t0 = time.perf_counter()
        score(*pair)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.mean(times) if times else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default=os.environ.get("ATALAIA_TEST_DATABASE_URL", ""))
    parser.add_argument("--rows", type=int, default=480_000, help="metric rows in the two windows (default 480,000)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if not args.database_url.startswith("postgresql"):
        raise SystemExit("needs a PostgreSQL --database-url (or ATALAIA_TEST_DATABASE_URL)")

    from sqlalchemy import create_engine, text

    from atalaia.settings import load_settings
    from atalaia.storage.db import upgrade
    from atalaia.storage.partitions import ensure_partitions
    from consumers.scoring import BatchScorer

    upgrade(args.database_url)
    engine = create_engine(args.database_url)
    start = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(days=1)
    with engine.begin() as conn:
        ensure_partitions(conn, since=start)
        conn.execute(text("DELETE FROM metrics WHERE model_version = 'materialize@1'"))
    t0 = time.perf_counter()
    _store(engine, args.rows, start)
    with engine.begin() as conn:
        conn.execute(text("ANALYZE metrics"))
    print(
        f"bench/materialize.py: {args.rows:,} metric rows in two 1-minute windows, stored in "
        f"{time.perf_counter() - t0:.0f} s; {args.repeats} passes each, alternating"
    )
    meteor = BatchScorer(load_settings(metric_groups="text,meteor")).text.meteor_with_language
    alone = _meteor_ms(meteor, 3.0)
    results: dict[bool, dict[str, list[float]]] = {False: {}, True: {}}
    for _ in range(args.repeats):
        for new in (False, True):
            r = results[new]
            w0, c0 = time.perf_counter(), time.process_time()
            windows = _pass(engine, new, start)
            r.setdefault("wall", []).append(time.perf_counter() - w0)
            r.setdefault("cpu", []).append(time.process_time() - c0)
            done = threading.Event()
            worker = threading.Thread(target=lambda n=new, d=done: (_pass(engine, n, start), d.set()))
            worker.start()
            r.setdefault("meteor", []).append(_meteor_ms(meteor, None, done))
            worker.join()
            r.setdefault("windows", []).append(windows)
    print(f"METEOR alone: {alone:.2f} ms per pair (mean over 3 s)\n")
    print("| pass | windows | wall s (median) | this process's CPU s (median) | METEOR ms/pair during the pass |")
    print("|---|---|---|---|---|")
    for new, label in ((False, "old: rows read into Python"), (True, "new: aggregated by PostgreSQL")):
        r = results[new]
        print(
            f"| {label} | {int(r['windows'][0])} | {statistics.median(r['wall']):.2f} "
            f"| {statistics.median(r['cpu']):.2f} | {statistics.median(r['meteor']):.2f} |"
        )
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM metrics WHERE model_version = 'materialize@1'"))


if __name__ == "__main__":
    main()
