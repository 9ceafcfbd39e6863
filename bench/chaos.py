"""Chaos bench: the delivery promise under faults, end to end.

Traffic at a fixed rate through a real ``atalaia serve`` (SmolLM2, 2 tokens per answer) into a
real ``atalaia worker``, while the broker restarts every ``--broker-every`` seconds, the worker is
SIGKILLed (and restarted) every ``--kill-every`` seconds, and PostgreSQL restarts once halfway.
The broker and PostgreSQL are private ones on free ports (``tests/integration/faults.py``), never
the shared ones. At the end it waits for the pipeline to drain and prints::

    sent / answered / stored / duplicated / lost

``stored``: answered requests whose event has its row in ``inference_events``; ``duplicated``:
rows beyond one per event (events and their operational metrics); ``lost``: answered requests
whose event never arrived. Not part of ``make test``. Usage (the issue's full run is the default)::

    .venv/bin/python bench/chaos.py [--minutes 10] [--rate 1] [--broker-every 120] [--kill-every 180]
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
from sqlalchemy import create_engine, func, select

from atalaia.metrics.operational import OPERATIONAL_METRICS
from atalaia.settings import Settings
from atalaia.storage import tables as t
from atalaia.topics import ensure_topics
from tests.conftest import MAIN_SETTINGS, free_port
from tests.integration.faults import private_kafka, private_postgres
from tests.integration.services import log_text, service, wait_until


def _health(base: str) -> dict[str, Any] | None:
    try:
        r = httpx.get(f"{base}/healthz", timeout=5)
        return r.json() if r.status_code == 200 else None
    except httpx.HTTPError:
        return None


def main() -> None:
    """Run the bench and print its figures."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="traffic duration")
    ap.add_argument("--rate", type=float, default=1.0, help="requests per second")
    ap.add_argument("--broker-every", type=float, default=120.0, help="s between broker restarts")
    ap.add_argument("--kill-every", type=float, default=180.0, help="s between worker SIGKILLs")
    ap.add_argument("--drain", type=float, default=600.0, help="s to wait for every event to be stored")
    args = ap.parse_args()
    duration = args.minutes * 60.0
    home = Path(tempfile.mkdtemp(prefix="atalaia-chaos-"))
    with private_kafka() as kafka, private_postgres() as pg:
        tag = uuid.uuid4().hex[:8]
        settings = Settings(
            home=home,
            kafka_bootstrap=kafka.bootstrap,
            database_url=pg.database(),
            topic_namespace=f"chaos-{tag}",
            topic_partitions=2,
            worker_id=f"chaos-worker-{tag}",
            models_dir=MAIN_SETTINGS.models_dir,
            inference_port=free_port(),
            worker_web_port=free_port(),
            metric_groups="operational",
            rag_enabled=False,
            cache_enabled=False,
        )
        ensure_topics(settings)
        engine = create_engine(settings.database_url, pool_pre_ping=True)
        base = f"http://127.0.0.1:{settings.inference_port}"
        answered: list[str] = []
        failed: list[str] = []
        faults: list[str] = []
        sent = 0
        lock = threading.Lock()

        def ask(i: int) -> None:
            body = {
                "model": "smollm2-135m-instruct",
                "max_tokens": 2,
                "messages": [{"role": "user", "content": f"Hi {i}"}],
            }
            try:
                r = httpx.post(f"{base}/v1/chat/completions", json=body, timeout=120)
                with lock:
                    (answered if r.status_code == 200 else failed).append(
                        r.headers.get("x-atalaia-event-id", str(r.status_code))
                    )
            except httpx.HTTPError as exc:
                with lock:
                    failed.append(repr(exc))

        with ExitStack() as stack:
            worker = [stack.enter_context(service("worker", settings))]
            stack.enter_context(service("serve", settings))
            wait_until(lambda: _health(base), 300, "the inference service\n" + log_text(settings, "serve")[-2000:])
            t0 = time.monotonic()

            def supervise() -> None:
                # As compose's "restart: unless-stopped" does: a worker that exited (it cannot
                # start while the broker is down) is started again.
                if worker[0].poll() is not None:
                    worker[0] = stack.enter_context(service("worker", settings))
                    faults.append(f"{time.monotonic() - t0:.0f}s worker exited, restarted")

            next_broker, next_kill, pg_done = args.broker_every, args.kill_every, False
            broker_restart: threading.Thread | None = None
            pg_restart: threading.Thread | None = None
            with ThreadPoolExecutor(max_workers=8) as pool:
                while (now := time.monotonic() - t0) < duration:
                    pool.submit(ask, sent)
                    sent += 1
                    # One restart at a time: a restart still under way (slow on a loaded machine)
                    # skips the next one rather than overlapping it.
                    if now >= next_broker and (broker_restart is None or not broker_restart.is_alive()):
                        next_broker += args.broker_every
                        broker_restart = threading.Thread(target=lambda: (kafka.stop(), kafka.start()), daemon=True)
                        broker_restart.start()
                        faults.append(f"{now:.0f}s broker restart")
                    if now >= next_kill:
                        next_kill += args.kill_every
                        os.killpg(worker[0].pid, signal.SIGKILL)
                        worker[0].wait()
                        worker[0] = stack.enter_context(service("worker", settings))
                        faults.append(f"{now:.0f}s worker SIGKILL")
                    if not pg_done and now >= duration / 2:
                        pg_done = True
                        pg_restart = threading.Thread(
                            target=lambda: (pg.stop("fast"), time.sleep(10), pg.start()), daemon=True
                        )
                        pg_restart.start()
                        faults.append(f"{now:.0f}s postgres restart")
                    supervise()
                    time.sleep(max(0.0, t0 + sent / args.rate - time.monotonic()))
            for restart in (broker_restart, pg_restart):  # both services up again before draining
                if restart is not None:
                    restart.join()
            ids = set(answered)

            def stored() -> int:
                try:
                    with engine.connect() as conn:
                        rows = conn.execute(select(t.inference_events.c.event_id)).scalars().all()
                    return len({str(r) for r in rows} & ids)
                except Exception:  # noqa: BLE001 - PostgreSQL may still be restarting
                    return 0

            drained_at = time.monotonic()
            try:
                wait_until(
                    lambda: (supervise(), stored() >= len(ids))[1],
                    args.drain,
                    "every answered event stored",
                    interval=2,
                )
            except AssertionError as exc:
                print(f"not drained: {exc}")
            drain_s = time.monotonic() - drained_at
            health = _health(base) or {}
        with engine.connect() as conn:
            event_rows = [str(r) for r in conn.execute(select(t.inference_events.c.event_id)).scalars()]
            metric_rows = conn.execute(select(func.count()).select_from(t.metrics)).scalar_one()
        engine.dispose()
    got = set(event_rows) & ids
    duplicated = (len(event_rows) - len(set(event_rows))) + max(
        0, metric_rows - len(set(event_rows)) * len(OPERATIONAL_METRICS)
    )
    print(f"faults: {', '.join(faults)}")
    print(f"delivery health at the end: {health.get('delivery')}")
    print(
        f"sent {sent} / answered {len(answered)} (failed {len(failed)}) / stored {len(got)} / "
        f"duplicated {duplicated} / lost {len(ids - got)}; drained {drain_s:.0f} s after the traffic stopped"
    )


if __name__ == "__main__":
    main()
