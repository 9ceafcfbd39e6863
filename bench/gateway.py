"""Latency the gateway adds: calls straight to an upstream vs through ``atalaia gateway``, same run.

The upstream is the local Anthropic Messages-format server of the tests (answers at once, so
the difference is the gateway's own cost); the upstream and the gateway run as separate
processes (uvicorn, as in production); the gateway emits every call's event into a real Kafka
topic through the producer SDK. Calls alternate direct / gateway, one at a time, over
keep-alive connections, so both see the same machine load. Reported: latency percentiles of
each, the added latency per percentile, and events emitted vs answered calls (0 lost).

Usage::

    .venv/bin/python bench/gateway.py [--calls 2000] [--stream] [--bootstrap 127.0.0.1:9092]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import pct, summary
from tests.conftest import free_port
from tests.helpers_anthropic import API_KEY

ROOT = Path(__file__).resolve().parents[1]

UPSTREAM = (
    "import sys, uvicorn; from tests.helpers_anthropic import create_app; "
    "uvicorn.run(create_app(), host='127.0.0.1', port=int(sys.argv[1]), log_level='warning', access_log=False)"
)


def _wait(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of a process and its live descendants (the gateway hands events to a child)."""
    total = cpu_seconds(pid)
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            total += tree_cpu_seconds(int(child))
    return total


def main() -> None:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls each way")
    parser.add_argument("--stream", action="store_true", help="streaming calls (time to the last byte)")
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    args = parser.parse_args()
    up_port, gw_port = free_port(), free_port()
    home = tempfile.mkdtemp(prefix="bench-gateway-")
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        ATALAIA_HOME=home,
        ATALAIA_KAFKA_BOOTSTRAP=args.bootstrap,
        ATALAIA_TOPIC_NAMESPACE=namespace,
        ATALAIA_GATEWAY_PORT=str(gw_port),
        ATALAIA_GATEWAY_UPSTREAMS=json.dumps(
            {"claude": {"base_url": f"http://127.0.0.1:{up_port}", "protocol": "anthropic"}}
        ),
        ATALAIA_LOG_JSON="true",
    )
    from atalaia.settings import Settings
    from atalaia.topics import ensure_topics

    ensure_topics(Settings(home=home, kafka_bootstrap=args.bootstrap, topic_namespace=namespace))
    procs = [
        subprocess.Popen([sys.executable, "-c", UPSTREAM, str(up_port)], env=env, cwd=ROOT),
        subprocess.Popen([sys.executable, "-m", "composition.cli.main", "gateway"], env=env, cwd=ROOT),
    ]
    try:
        _wait(f"http://127.0.0.1:{up_port}/v1/messages")
        _wait(f"http://127.0.0.1:{gw_port}/healthz")
        headers = {"x-api-key": API_KEY, "anthropic-version": "2023-06-01", "content-type": "application/json"}
        body = json.dumps(
            {
                "model": "claude-haiku-4-5",
                "max_tokens": 32,
                "stream": args.stream,
                "messages": [{"role": "user", "content": "How many vacation days do I get after three years?"}],
            }
        ).encode()
        direct_url = f"http://127.0.0.1:{up_port}/v1/messages"
        gateway_url = f"http://127.0.0.1:{gw_port}/claude/v1/messages"
        times: dict[str, list[float]] = {"direct": [], "gateway": []}
        cpu: dict[str, float] = {}
        with httpx.Client(timeout=30) as direct, httpx.Client(timeout=30) as via:
            for i in range(args.calls + 100):
                if i == 100:
                    cpu = {
                        "upstream": cpu_seconds(procs[0].pid),
                        "gateway": cpu_seconds(procs[1].pid),
                        "events": tree_cpu_seconds(procs[1].pid) - cpu_seconds(procs[1].pid),
                    }
                for name, client, url in (("direct", direct, direct_url), ("gateway", via, gateway_url))[
                    :: 1 if i % 2 else -1
                ]:
                    start = time.perf_counter()
                    r = client.post(url, content=body, headers=headers)
                    r.read()
                    elapsed = (time.perf_counter() - start) * 1000
                    assert r.status_code == 200, r.text
                    if i >= 100:  # the first 100 warm connections and code paths up
                        times[name].append(elapsed)
        time.sleep(1.0)  # the last events leave the gateway's producer
        cpu = {
            "upstream": cpu_seconds(procs[0].pid) - cpu["upstream"],
            "gateway": cpu_seconds(procs[1].pid) - cpu["gateway"],
            "events": tree_cpu_seconds(procs[1].pid) - cpu_seconds(procs[1].pid) - cpu["events"],
        }
        metrics = httpx.get(f"http://127.0.0.1:{gw_port}/metrics").text
        emitted = sum(float(v) for v in re.findall(r"atalaia_gateway_events_total\{[^}]*\} ([0-9.e+]+)", metrics))
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(30)
    kind = "streaming" if args.stream else "non-streaming"
    print(f"{args.calls} {kind} Anthropic Messages calls each way, alternating (ms, to the last byte):")
    print(f"  direct   {summary(times['direct'])}")
    print(f"  gateway  {summary(times['gateway'])}")
    for q in (50, 95, 99):
        print(f"  added p{q}: {pct(times['gateway'], q) - pct(times['direct'], q):.2f} ms")
    # Independent of other tenants' load: the CPU each process spent per call. The upstream
    # answers every call twice (direct and through the gateway); the gateway once per call.
    print(
        f"  CPU per call: gateway {cpu['gateway'] / args.calls * 1000:.2f} ms (parse, forward, relay, event hand-off), "
        f"its event process {cpu['events'] / args.calls * 1000:.2f} ms (Kafka send), "
        f"upstream {cpu['upstream'] / (2 * args.calls) * 1000:.2f} ms"
    )
    answered = args.calls + 100
    print(f"events emitted by the gateway: {emitted:.0f} of {answered} answered calls (lost: {answered - emitted:.0f})")


if __name__ == "__main__":
    main()
