"""Hot swap under load: request latency while versions are deployed and rolled back.

The real SmolLM2 serves requests back to back from ``--clients`` threads through the HTTP app
(in process, no Kafka: the swap itself is what is measured). Phase 1 measures steady-state
latency; phase 2 repeats the same load while a thread deploys a second version (a copy of the
model folder, loaded from disk) and rolls it back, ``--swaps`` times. Reported side by side:
latency p50/p95 steady vs during swaps (and the ratio), failed requests (goal 0), load time of a
deploy, and time of a rollback (the previous model stays in memory).

Usage::

    .venv/bin/python bench/hot_swap.py [--requests 24] [--clients 2] [--swaps 3] [--max-tokens 16]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import pct


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=24, help="requests per phase")
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--swaps", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=16)
    args = parser.parse_args()

    from fastapi.testclient import TestClient

    from atalaia.logs import configure_logging
    from atalaia.models.generator import Generator
    from atalaia.settings import Settings
    from inference.app import create_app
    from inference.models import ModelManager, ServedModel

    configure_logging("ERROR", json_lines=False)
    base = Settings()
    home = Path(tempfile.mkdtemp(prefix="atalaia-bench-swap-"))
    settings = base.model_copy(update={"home": home, "cache_enabled": False, "rag_enabled": False})
    copy = home / "v2"
    shutil.copytree(base.generator_path, copy)
    generator = Generator.load(base.generator_path)
    manager = ModelManager(ServedModel(base.model_version, generator, str(base.generator_path)), Generator.load)
    client = TestClient(create_app(settings, generator, None, models=manager))
    print(f"# hot-swap benchmark ({time.strftime('%Y-%m-%d %H:%M')}), {args.clients} clients, {args.max_tokens} tokens")

    def load(n: int) -> tuple[list[float], int, set[str]]:
        latencies: list[float] = []
        failures = 0
        versions: set[str] = set()
        lock = threading.Lock()
        counter = iter(range(n))

        def worker() -> None:
            nonlocal failures
            while True:
                with lock:
                    if next(counter, None) is None:
                        return
                t0 = time.perf_counter()
                r = client.post(
                    "/v1/chat/completions",
                    json={
                        "model": base.generator_model,
                        "messages": [{"role": "user", "content": "How many vacation days do I get?"}],
                        "max_tokens": args.max_tokens,
                    },
                )
                with lock:
                    latencies.append((time.perf_counter() - t0) * 1000)
                    if r.status_code != 200:
                        failures += 1
                    else:
                        versions.add(r.json()["model"])

        threads = [threading.Thread(target=worker) for _ in range(args.clients)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        return latencies, failures, versions

    load(args.clients * 2)  # warm-up
    steady, steady_fail, _ = load(args.requests)

    deploy_s: list[float] = []
    rollback_s: list[float] = []
    done = threading.Event()

    def swapper() -> None:
        for i in range(args.swaps):
            t0 = time.perf_counter()
            manager.deploy(f"bench@v2-{i}", str(copy))
            deploy_s.append(time.perf_counter() - t0)
            time.sleep(0.5)
            t0 = time.perf_counter()
            manager.rollback()
            rollback_s.append(time.perf_counter() - t0)
            time.sleep(0.5)
        done.set()

    swaps = threading.Thread(target=swapper)
    swaps.start()
    during, during_fail, versions = load(args.requests)
    swaps.join()
    while not done.is_set():
        time.sleep(0.1)

    print(
        f"steady:      p50 {pct(steady, 50):7.0f} ms  p95 {pct(steady, 95):7.0f} ms  failed {steady_fail}/{len(steady)}"
    )
    print(
        f"with swaps:  p50 {pct(during, 50):7.0f} ms  p95 {pct(during, 95):7.0f} ms  failed {during_fail}/{len(during)}"
    )
    print(
        f"ratio (swaps / steady): p50 {pct(during, 50) / pct(steady, 50):.2f}  "
        f"p95 {pct(during, 95) / pct(steady, 95):.2f}"
    )
    print(f"versions that answered during swaps: {len(versions)}")
    print(f"deploy (load from disk): median {sorted(deploy_s)[len(deploy_s) // 2]:.2f} s over {len(deploy_s)}")
    print(
        f"rollback (in memory):    median {1000 * sorted(rollback_s)[len(rollback_s) // 2]:.3f} ms "
        f"over {len(rollback_s)}"
    )
    shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
