"""Sustained pipeline load: how many events/s the workers hold, and whether they hold it.

Phases, each on a fresh topic namespace and a fresh database of a private PostgreSQL server
(``tests/integration/faults.py``; the shared broker at ``ATALAIA_KAFKA_BOOTSTRAP`` carries the
topics), with cheap metrics only (``ATALAIA_METRIC_GROUPS=operational``):

1. Capacity: ``--prefill`` events are put on the topic first, then one worker (then two) drains
   them; the drain rate between 10 % and 90 % of the backlog is the capacity. Two workers share
   the partitions; the ratio to one worker is printed.
2. Sustained load: events produced at ``--load-factor`` x the measured capacity for
   ``--duration`` seconds, with one worker and then with two. Sampled every ``--sample-every``
   seconds: events produced and stored, consumer lag (end offsets minus the group's committed
   offsets), each worker's RSS. Reported: events/s stored, lag over time, event -> metric-row
   latency p50/p95/p99 (row ``created_at`` minus the event's ``ts``), RSS first/last/max and its
   slope over the second half of the run (flat means no leak).
3. Producer SDK: ``EventProducer.emit`` throughput to the live broker, and the disk spool: events
   spooled per second while Kafka is unreachable, and replayed per second once it is back.

Needs the shared Kafka running (``atalaia kafka start``) and PostgreSQL's server binaries
(``scripts/system-deps.sh test``). Usage::

    .venv/bin/python bench/load.py                      # 10 minutes per sustained phase
    .venv/bin/python bench/load.py --duration 120       # a shorter run
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import pct, summary


@dataclass
class Sample:
    """One reading during a run."""

    t: float
    produced: int
    stored: int
    lag: int
    rss_mb: list[float] = field(default_factory=list)


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _event(i: int, version: str, reference: bool = False) -> Any:
    from atalaia.events import ChatMessage, InferenceEvent

    return InferenceEvent(
        service="bench",
        model_version=version,
        messages=[ChatMessage(role="user", content=f"How many vacation days do I get in year {i}?")],
        response="Employees get 30 working days of paid vacation a year; see section 4.2.",
        latency_ms=100.0 + i % 50,
        prompt_tokens=15,
        completion_tokens=18,
        cost=0.00003,
        # With the text group on (--groups), every event has a reference answer to score against.
        reference="Employees get 30 working days of paid vacation per year." if reference else None,
    )


class Pipeline:
    """Workers on one namespace and database, with probes for counts, lag and memory."""

    def __init__(self, base: Any, pg: Any, name: str, workers: int) -> None:
        from kafka import KafkaConsumer, KafkaProducer, TopicPartition

        from atalaia.topics import ensure_topics
        from tests.conftest import free_port

        tag = f"{name}-{uuid.uuid4().hex[:6]}"
        self.settings = base.model_copy(
            update={
                "home": Path(tempfile.mkdtemp(prefix=f"atalaia-load-{name}-")),
                "topic_namespace": f"load-{tag}",
                "worker_id": f"load-worker-{tag}",
                "database_url": pg.database(),
                "worker_web_port": free_port(),
            }
        )
        ensure_topics(self.settings)
        from sqlalchemy import create_engine

        self.engine = create_engine(self.settings.database_url)
        self.workers = workers
        self.procs: list[subprocess.Popen[bytes]] = []
        self.producer = KafkaProducer(
            bootstrap_servers=self.settings.bootstrap_servers, linger_ms=5, acks=1, batch_size=256 * 1024
        )
        self.topic = self.settings.topic("inference")
        self.partitions = [TopicPartition(self.topic, p) for p in range(self.settings.topic_partitions)]
        self.probe = KafkaConsumer(bootstrap_servers=self.settings.bootstrap_servers, group_id=self.settings.worker_id)
        self.produced = 0

    def start_workers(self) -> None:
        from tests.conftest import free_port, settings_env

        for n in range(self.workers):
            s = self.settings.model_copy(update={"home": self.settings.home / f"w{n}", "worker_web_port": free_port()})
            s.home.mkdir(parents=True, exist_ok=True)
            log = (s.home / "worker.log").open("wb")
            self.procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "composition.cli.main", "worker"],
                    env=settings_env(s),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )

    def stop_workers(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.procs.clear()

    def send(self, n: int, version: str) -> None:
        for _ in range(n):
            ev = _event(self.produced, version, "text" in self.settings.enabled_groups)
            self.producer.send(self.topic, key=ev.key, value=ev.to_json())
            self.produced += 1

    def stored(self) -> int:
        from sqlalchemy import func, select

        from atalaia.storage import tables as t

        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(t.inference_events)).scalar_one())

    def lag(self) -> int:
        end = self.probe.end_offsets(self.partitions)
        committed = [self.probe.committed(tp) or 0 for tp in self.partitions]
        return int(sum(end.values()) - sum(committed))

    def sample(self, t0: float) -> Sample:
        return Sample(
            time.monotonic() - t0, self.produced, self.stored(), self.lag(), [_rss_mb(p.pid) for p in self.procs]
        )

    def latencies_ms(self) -> list[float]:
        from sqlalchemy import select

        from atalaia.storage import tables as t

        with self.engine.connect() as conn:
            rows = conn.execute(
                select(t.metrics.c.created_at, t.metrics.c.ts).where(
                    t.metrics.c.name == "latency_ms", t.metrics.c.model_version == self.version
                )
            ).all()
        return [(c - s).total_seconds() * 1000 for c, s in rows]

    @property
    def version(self) -> str:
        """The model version of the sustained traffic: the served base one, so perplexity (which
        scores only versions Atalaia hosts) runs on it like on a real deployment's answers."""
        return str(self.settings.model_version)

    def metric_rows(self) -> dict[str, tuple[int, float, float]]:
        """Per metric name of the sustained traffic: rows, lowest and highest ``sample_fraction``."""
        from sqlalchemy import func, select

        from atalaia.storage import tables as t

        m = t.metrics.c
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(m.name, func.count(), func.min(m.sample_fraction), func.max(m.sample_fraction))
                .where(m.model_version == self.version)
                .group_by(m.name)
            ).all()
        return {name: (int(n), float(lo), float(hi)) for name, n, lo, hi in rows}

    def close(self) -> None:
        self.stop_workers()
        self.producer.close()
        self.probe.close(autocommit=False)
        self.engine.dispose()

    def wait_joined(self, timeout: float = 180) -> None:
        """Until a probe event comes back as a row: every worker has joined and is consuming."""
        before = self.stored()
        self.send(1, "probe")
        self.producer.flush()
        deadline = time.monotonic() + timeout
        while self.stored() <= before:
            if time.monotonic() > deadline or any(p.poll() is not None for p in self.procs):
                raise SystemExit(f"workers did not start; see {self.settings.home}/w*/worker.log")
            time.sleep(0.3)
        time.sleep(3)  # a second worker may join a moment later; let the rebalance settle


def capacity(base: Any, pg: Any, workers: int, prefill: int) -> float:
    """Drain rate (events/s) of ``workers`` workers on a backlog of ``prefill`` events."""
    pipe = Pipeline(base, pg, f"cap{workers}", workers)
    try:
        pipe.send(prefill, "capacity")
        pipe.producer.flush()
        pipe.start_workers()
        samples: list[tuple[float, int]] = []
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            n = pipe.stored()
            samples.append((time.monotonic(), n))
            if n >= prefill:
                break
            time.sleep(0.5)
        lo = next(s for s in samples if s[1] >= 0.1 * prefill)
        hi = next(s for s in samples if s[1] >= 0.9 * prefill)
        return (hi[1] - lo[1]) / max(hi[0] - lo[0], 1e-9)
    finally:
        pipe.close()


def sustained(base: Any, pg: Any, workers: int, rate: float, duration: float, every: float) -> dict[str, Any]:
    """Produce at ``rate`` for ``duration`` s; sample lag and memory; drain; report."""
    pipe = Pipeline(base, pg, f"run{workers}", workers)
    try:
        pipe.start_workers()
        pipe.wait_joined()
        start_stored = pipe.stored()
        pipe.produced = 0
        samples: list[Sample] = []
        t0 = time.monotonic()
        next_sample = t0
        tick = 0.02
        while (now := time.monotonic()) - t0 < duration:
            due = int((now - t0) * rate) - pipe.produced
            if due > 0:
                pipe.send(due, pipe.version)
            if now >= next_sample:
                samples.append(pipe.sample(t0))
                next_sample += every
            time.sleep(tick)
        pipe.producer.flush()
        produced_s = time.monotonic() - t0
        drain_deadline = time.monotonic() + 300
        while pipe.stored() - start_stored < pipe.produced and time.monotonic() < drain_deadline:
            time.sleep(0.5)
        samples.append(pipe.sample(t0))
        drained_s = time.monotonic() - t0
        stored = pipe.stored() - start_stored
        lat = pipe.latencies_ms()
        return {
            "metric_rows": pipe.metric_rows(),
            "workers": workers,
            "rate": rate,
            "produced": pipe.produced,
            "stored": stored,
            "events_per_s": stored / drained_s,
            "produce_s": produced_s,
            "drain_after_s": drained_s - produced_s,
            "samples": samples,
            "latency_ms": lat,
        }
    finally:
        pipe.close()


def report_sustained(r: dict[str, Any]) -> None:
    samples: list[Sample] = r["samples"]
    print(
        f"\n## sustained load, {r['workers']} worker(s), target {r['rate']:.0f} events/s for "
        f"{r['produce_s']:.0f} s: {r['stored']}/{r['produced']} stored, {r['events_per_s']:.0f} events/s "
        f"overall; backlog drained {r['drain_after_s']:.1f} s after the producer stopped"
    )
    print(f"{'event->metric row':18s} {summary(r['latency_ms'])}  (ms)")
    lags = [s.lag for s in samples[:-1]]
    print(f"consumer lag (events): median {pct(lags, 50):.0f}, p95 {pct(lags, 95):.0f}, max {max(lags)}")
    print("   t(s)  produced    stored     lag  RSS per worker (MB)")
    step = max(1, len(samples) // 12)
    for s in samples[::step] + ([samples[-1]] if (len(samples) - 1) % step else []):
        rss = " ".join(f"{m:7.1f}" for m in s.rss_mb)
        print(f"{s.t:7.0f} {s.produced:9d} {s.stored:9d} {s.lag:7d}  {rss}")
    print("metric rows of the traffic (rows, sample_fraction min..max):")
    for name, (n, lo, hi) in sorted(r["metric_rows"].items()):
        print(f"  {name:28s} {n:9d}  {lo:.3f}..{hi:.3f}")
    for w in range(r["workers"]):
        series = [(s.t, s.rss_mb[w]) for s in samples[:-1] if len(s.rss_mb) > w]
        half = series[len(series) // 2 :]
        slope = _slope(half) * 60
        values = [m for _, m in series]
        print(
            f"worker {w}: RSS first {values[0]:.1f} MB, last {values[-1]:.1f} MB, max {max(values):.1f} MB; "
            f"slope over the second half {slope:+.2f} MB/min"
        )


def _slope(points: list[tuple[float, float]]) -> float:
    n = len(points)
    if n < 2:
        return 0.0
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    var = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / var if var else 0.0


def producer_and_spool(base: Any, events: int) -> None:
    """EventProducer throughput to Kafka; spool append and replay speed."""
    from atalaia.topics import ensure_topics
    from producers.sdk import EventProducer
    from tests.conftest import free_port

    s = base.model_copy(
        update={
            "home": Path(tempfile.mkdtemp(prefix="atalaia-load-sdk-")),
            "topic_namespace": f"load-sdk-{uuid.uuid4().hex[:6]}",
        }
    )
    ensure_topics(s)
    evs = [_event(i, "sdk@1") for i in range(events)]
    print("\n## producer SDK to the live broker, events of ~0.6 kB (queue of 10,000)")
    for burst in (min(events, 8_000), events):
        producer = EventProducer(s, client_id=f"bench-sdk-{burst}")
        t0 = time.perf_counter()
        for ev in evs[:burst]:
            producer.emit(ev)
        emitted = time.perf_counter() - t0
        # Delivered: sent directly or replayed from the spool by the same producer.
        while producer.stats.sent < burst and time.perf_counter() - t0 < 300:
            time.sleep(0.02)
        delivered = time.perf_counter() - t0
        producer.close()
        print(
            f"burst of {burst}: emit() {burst / emitted:,.0f} events/s; all delivered (acks=all) at "
            f"{burst / delivered:,.0f} events/s; through the spool {producer.stats.spooled}, lost {producer.stats.lost}"
        )

    down = s.model_copy(update={"kafka_bootstrap": f"127.0.0.1:{free_port()}"})
    spooler = EventProducer(down, client_id="bench-spool")
    t0 = time.perf_counter()
    for ev in evs:
        spooler.emit(ev)
    spooler.close(timeout=600)
    spooled_s = time.perf_counter() - t0
    depth = spooler.spool_depth
    t1 = time.perf_counter()
    replayer = EventProducer(s, client_id="bench-spool")  # same spool file, broker reachable
    while replayer.spool_depth > 0 and time.perf_counter() - t1 < 900:
        time.sleep(0.1)
    replay_s = time.perf_counter() - t1
    left = replayer.spool_depth
    replayer.close()
    print(
        f"spool while Kafka is unreachable (one fsync per batch): {depth} events in {spooled_s:.1f} s = "
        f"{depth / spooled_s:,.0f} events/s; replay once it answers: {depth - left} in {replay_s:.1f} s = "
        f"{(depth - left) / replay_s:,.0f} events/s (left {left}, lost {spooler.stats.lost})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of each sustained run (default 600)")
    parser.add_argument("--prefill", type=int, default=20_000, help="backlog of the capacity measurement")
    parser.add_argument("--load-factor", type=float, default=0.8, help="sustained rate as a fraction of capacity")
    parser.add_argument("--rate", type=float, default=0.0, help="sustained rate of one worker (0: from capacity)")
    parser.add_argument("--sample-every", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--sdk-events", type=int, default=20_000, help="events for the SDK and spool measurement")
    parser.add_argument("--workers", default="1,2", help="worker counts of the sustained runs (default 1,2)")
    parser.add_argument(
        "--groups", default="operational", help="ATALAIA_METRIC_GROUPS of the workers ('default': the default groups)"
    )
    parser.add_argument(
        "--log-level", default="WARNING", help="workers' ATALAIA_LOG_LEVEL (INFO: one line per batch, with step times)"
    )
    parser.add_argument("--skip", default="", help="comma-separated phases to skip: capacity,sustained,sdk")
    args = parser.parse_args()

    from atalaia.logs import configure_logging
    from atalaia.settings import Settings
    from tests.integration.faults import private_postgres

    configure_logging("WARNING", json_lines=False)
    import logging

    logging.getLogger("kafka").setLevel(logging.CRITICAL)  # the spool phase's broker is unreachable on purpose
    main_settings = Settings()
    if args.groups == "default":
        args.groups = Settings.model_fields["metric_groups"].default
    base = Settings(
        home=Path(tempfile.mkdtemp(prefix="atalaia-load-")),
        kafka_bootstrap=main_settings.kafka_bootstrap,
        topic_partitions=4,
        metric_groups=args.groups,
        models_dir=main_settings.models_dir,
        log_level=args.log_level,
    )
    skip = set(filter(None, args.skip.split(",")))
    print(
        f"bench/load.py: {os.cpu_count()} CPUs, Kafka {base.kafka_bootstrap}, private PostgreSQL, groups {args.groups}"
    )
    with private_postgres() as pg:
        caps: dict[int, float] = {}
        if "capacity" not in skip:
            for workers in (1, 2):
                caps[workers] = capacity(base, pg, workers, args.prefill)
            print(f"\n## capacity (drain of a {args.prefill}-event backlog, 4 partitions)")
            print(
                f"1 worker: {caps[1]:,.0f} events/s; 2 workers: {caps[2]:,.0f} events/s; ratio {caps[2] / caps[1]:.2f}"
            )
        if "sustained" not in skip:
            counts = [int(w) for w in args.workers.split(",")]
            results = []
            for w in counts:
                # Without a capacity measurement (--skip capacity), --rate is the rate of one worker.
                rate = args.rate * w if args.rate else args.load_factor * caps.get(w, caps.get(1, 200.0) * w)
                results.append(sustained(base, pg, w, rate, args.duration, args.sample_every))
            for r in results:
                report_sustained(r)
            if len(results) == 2:
                ratio = results[1]["events_per_s"] / results[0]["events_per_s"]
                print(f"\nsustained events/s, {counts[1]} workers / {counts[0]} worker(s): {ratio:.2f}")
    if "sdk" not in skip:
        producer_and_spool(base, args.sdk_events)


if __name__ == "__main__":
    main()
