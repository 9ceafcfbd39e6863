"""Time to erase one data subject among many stored events (``atalaia privacy erase``).

Fills a database with ``--events`` inference events (``--subjects`` distinct subjects, so one
subject holds events/subjects of them), each with its operational metrics (6 rows), two
embeddings (``--dim`` float32 each) and, for one event in ten, a feedback row; then erases
``--repeats`` subjects one after another and reports the median and largest time per erasure,
and the rows each removed. Old (no ``subject_id`` index, before migration 0005_privacy) against
new is measured by dropping the index in the same run.

Usage::

    .venv/bin/python bench/privacy_erase.py --url postgresql+psycopg://USER:PW@HOST/DB [--events 100000]

The database must be empty and migrated (``atalaia db upgrade``); the bench fills it and leaves it.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import create_engine, insert, text

from atalaia.privacy import erase_subject
from atalaia.settings import Settings
from atalaia.storage import tables as t
from bench.common import median

METRICS = ("latency_ms", "prompt_tokens", "completion_tokens", "total_tokens", "cost", "cache_hit")


def fill(engine, events: int, subjects: int, dim: int, seed: int) -> list[str]:  # type: ignore[no-untyped-def]
    rng = random.Random(seed)
    sids = [f"{rng.getrandbits(256):064x}" for _ in range(subjects)]
    start = datetime.now(UTC) - timedelta(days=1)
    vector = b"\x00" * (4 * dim)
    batch = 5_000
    for first in range(0, events, batch):
        ev_rows, m_rows, e_rows, f_rows = [], [], [], []
        for i in range(first, min(events, first + batch)):
            eid, ts = str(uuid.UUID(int=rng.getrandbits(128))), start + timedelta(milliseconds=i)
            ev_rows.append(
                {
                    "event_id": eid,
                    "ts": ts,
                    "service": "svc",
                    "model_version": "m@1",
                    "messages": [{"role": "user", "content": f"question {i}"}],
                    "response": f"answer {i}",
                    "context": [],
                    "latency_ms": 1.0,
                    "prompt_tokens": 3,
                    "completion_tokens": 4,
                    "cost": 0.0,
                    "cache_hit": False,
                    "metadata": {},
                    "subject_id": sids[i % subjects],
                    "ingested_at": ts,
                }
            )
            base = {"event_id": eid, "service": "svc", "model_version": "m@1", "ts": ts, "created_at": ts}
            m_rows += [{**base, "name": n, "value": 1.0} for n in METRICS]
            e_rows += [
                {"event_id": eid, "kind": k, "model_version": "m@1", "ts": ts, "dim": dim, "vector": vector}
                for k in ("prompt", "response")
            ]
            if i % 10 == 0:
                f_rows.append(
                    {
                        "event_id": str(uuid.UUID(int=rng.getrandbits(128))),
                        "inference_event_id": eid,
                        "ts": ts,
                        "rating": 1,
                        "metadata": {},
                        "subject_id": sids[i % subjects],
                        "ingested_at": ts,
                    }
                )
        with engine.begin() as conn:
            conn.execute(insert(t.inference_events), ev_rows)
            conn.execute(insert(t.metrics), m_rows)
            conn.execute(insert(t.embeddings), e_rows)
            conn.execute(insert(t.feedback), f_rows)
    return sids


def erase_times(engine, settings: Settings, sids: list[str]) -> tuple[list[float], dict[str, int]]:  # type: ignore[no-untyped-def]
    times, rows = [], {}
    for sid in sids:
        report = erase_subject(engine, settings, sid, clear_cache=False, requested_by="bench")
        times.append(report.seconds)
        rows = report.deleted
    return times, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--subjects", type=int, default=2_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    engine = create_engine(args.url)
    settings = Settings(home=Path(tempfile.mkdtemp()), database_url=args.url)
    started = time.perf_counter()
    sids = fill(engine, args.events, args.subjects, args.dim, args.seed)
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("ANALYZE"))
    print(
        f"{args.events} events ({args.events * 6} metrics, {args.events * 2} embeddings of {args.dim} floats, "
        f"{args.events // 10} feedback) of {args.subjects} subjects on {engine.dialect.name}, "
        f"filled in {time.perf_counter() - started:.0f} s"
    )
    new_times, rows = erase_times(engine, settings, sids[: args.repeats])
    print(
        f"  with the subject_id indexes (0005_privacy): median {median(new_times):.3f} s, "
        f"max {max(new_times):.3f} s per subject; last erased {rows}"
    )
    with engine.begin() as conn:
        conn.execute(text("DROP INDEX ix_inference_events_subject_id"))
        conn.execute(text("DROP INDEX ix_feedback_subject_id"))
    old_times, rows = erase_times(engine, settings, sids[args.repeats : 2 * args.repeats])
    print(
        f"  without them (before 0005_privacy):         median {median(old_times):.3f} s, "
        f"max {max(old_times):.3f} s per subject; last erased {rows}"
    )
    with engine.begin() as conn:
        conn.execute(text("CREATE INDEX ix_inference_events_subject_id ON inference_events (subject_id)"))
        conn.execute(text("CREATE INDEX ix_feedback_subject_id ON feedback (subject_id)"))


if __name__ == "__main__":
    main()
