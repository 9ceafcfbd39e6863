"""Benchmark of the thin slice.

1. Request latency with and without event emission, side by side in one run: the same in-process
   inference app (real SmolLM2) is called alternately with a real producer (to Kafka) and with
   none; plus the cost of ``EventProducer.emit`` itself, measured on its own.
2. Event → metrics-row freshness at a steady rate: inference events emitted through the SDK at
   ``--rate`` per second for ``--seconds``; a real faust worker stores them; freshness is the row's
   ``created_at`` minus the event's ``ts``.

Needs Kafka running (``atalaia kafka start``) and the models prepared. Usage::

    .venv/bin/python bench/slice.py [--requests 40] [--rate 50] [--seconds 30] [--database-url URL]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import median, pct, summary


def bench_emission(settings, requests: int, max_tokens: int) -> None:  # type: ignore[no-untyped-def]
    from fastapi.testclient import TestClient

    from atalaia.events import ChatMessage, InferenceEvent
    from atalaia.models.generator import Generator
    from atalaia.topics import ensure_topics
    from inference.app import create_app
    from producers.sdk import EventProducer

    # Its own namespace: the 5,000 events of the emit() measurement must not queue up in front of
    # the freshness measurement's worker.
    settings = settings.model_copy(update={"topic_namespace": settings.topic_namespace + "-emit"})
    ensure_topics(settings)
    generator = Generator.load(settings.generator_path)
    producer = EventProducer(settings, client_id="bench-emit")
    with_events = TestClient(create_app(settings, generator, producer))
    without = TestClient(create_app(settings, generator, None))
    body = {
        "model": settings.model_version,
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": "How many vacation days do I get?"}],
    }
    for client in (with_events, without):  # warm-up
        client.post("/v1/chat/completions", json=body)
    lat: dict[str, list[float]] = {"with emission": [], "without emission": []}
    for i in range(requests):
        # Alternate so that machine noise hits both arms alike.
        order = [("with emission", with_events), ("without emission", without)]
        for name, client in order if i % 2 == 0 else order[::-1]:
            t0 = time.perf_counter()
            assert client.post("/v1/chat/completions", json=body).status_code == 200
            lat[name].append((time.perf_counter() - t0) * 1000)
    print(f"\n## request latency, {requests} requests each, max_tokens={max_tokens} (ms)")
    for name, values in lat.items():
        print(f"{name:18s} {summary(values)}")
    ratio = median(lat["with emission"]) / median(lat["without emission"])
    print(f"median ratio with/without: {ratio:.3f}")

    ev = InferenceEvent(
        service="bench",
        model_version="m",
        messages=[ChatMessage(role="user", content="q" * 200)],
        response="a" * 400,
        latency_ms=1,
        prompt_tokens=1,
        completion_tokens=1,
        cost=0,
    )
    emit_us = []
    for _ in range(5000):
        fresh = ev.model_copy(update={"event_id": uuid.uuid4()})
        t0 = time.perf_counter()
        producer.emit(fresh)
        emit_us.append((time.perf_counter() - t0) * 1e6)
    producer.close()
    print(f"\n## EventProducer.emit() on the request path (µs), 5,000 events of ~1 kB\n{'emit':18s} {summary(emit_us)}")
    print(f"delivered {producer.stats.sent}, spooled {producer.stats.spooled}, lost {producer.stats.lost}")


def bench_freshness(settings, rate: float, seconds: float) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy import select

    from atalaia.events import ChatMessage, InferenceEvent
    from atalaia.storage import tables as t
    from atalaia.storage.db import get_engine, upgrade
    from atalaia.topics import ensure_topics
    from producers.sdk import EventProducer
    from tests.conftest import settings_env

    upgrade(settings.database_url)
    ensure_topics(settings)
    log = Path(settings.home) / "bench-worker.log"
    with log.open("wb") as fh:
        worker = subprocess.Popen(
            [sys.executable, "-m", "composition.cli.main", "worker"],
            env=settings_env(settings),
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
    engine = get_engine(settings.database_url)
    producer = EventProducer(settings, client_id="bench-fresh")
    try:
        # Wait for the worker to join its group: one probe event must come back.
        probe = InferenceEvent(
            service="bench",
            model_version="probe",
            messages=[ChatMessage(role="user", content="q")],
            response="a",
            latency_ms=1,
            prompt_tokens=1,
            completion_tokens=1,
            cost=0,
        )
        producer.emit(probe)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                if conn.execute(select(t.metrics.c.id).where(t.metrics.c.event_id == str(probe.event_id))).first():
                    break
            time.sleep(0.2)
        else:
            raise SystemExit(f"worker did not start; see {log}")
        n = int(rate * seconds)
        ids = []
        start = time.monotonic()
        for i in range(n):
            target = start + i / rate
            delay = target - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            ev = InferenceEvent(
                service="bench",
                model_version="bench@1",
                messages=[ChatMessage(role="user", content=f"q{i}")],
                response="a",
                latency_ms=100 + i % 50,
                prompt_tokens=10,
                completion_tokens=5,
                cost=0.001,
            )
            producer.emit(ev)
            ids.append(str(ev.event_id))
        producer.flush()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                rows = conn.execute(
                    select(t.inference_events.c.event_id, t.inference_events.c.ts).where(
                        t.inference_events.c.model_version == "bench@1"
                    )
                ).all()
            if len(rows) >= n:
                break
            time.sleep(0.5)
        with engine.connect() as conn:
            fresh = conn.execute(
                select(t.metrics.c.created_at, t.metrics.c.ts).where(
                    t.metrics.c.model_version == "bench@1", t.metrics.c.name == "latency_ms"
                )
            ).all()
        lag_ms = [((c.replace(tzinfo=None) - s.replace(tzinfo=None)).total_seconds()) * 1000 for c, s in fresh]
        backend = settings.database_url.split(":")[0]
        print(f"\n## event -> metrics row freshness at {rate:g} events/s for {seconds:g} s (ms), {backend}")
        print(f"{'freshness':18s} {summary(lag_ms)}")
        print(f"stored {len(rows)}/{n} events; p95/p50 ratio {pct(lag_ms, 95) / pct(lag_ms, 50):.2f}")
    finally:
        producer.close()
        worker.terminate()
        worker.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--database-url", default="")
    args = parser.parse_args()

    from atalaia.logs import configure_logging
    from atalaia.settings import Settings

    configure_logging("WARNING", json_lines=False)
    tag = uuid.uuid4().hex[:8]
    home = Path(tempfile.mkdtemp(prefix="atalaia-bench-"))
    base = Settings()
    settings = Settings(
        home=home,
        topic_namespace=f"bench-{tag}",
        worker_id=f"bench-{tag}",
        models_dir=base.models_dir,
        kafka_bootstrap=base.kafka_bootstrap,
        database_url=args.database_url or f"sqlite:///{home / 'bench.db'}",
        topic_partitions=2,
        worker_web_port=int(os.environ.get("BENCH_WORKER_PORT", "16066")),
    )
    print(f"# Atalaia slice benchmark ({time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores)")
    bench_emission(settings, args.requests, args.max_tokens)
    # The slice's metrics (latency, tokens, cost); model-based metrics are measured by bench/metrics.py.
    bench_freshness(settings.model_copy(update={"metric_groups": "operational"}), args.rate, args.seconds)


if __name__ == "__main__":
    main()
