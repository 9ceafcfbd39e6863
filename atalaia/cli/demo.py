"""``atalaia demo``: the thin slice end to end on embedded defaults, narrated in the terminal."""

from __future__ import annotations

import time
from importlib import resources

import httpx
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy import func, select

from atalaia.settings import Settings
from atalaia.storage import tables as t


def _wait_http(url: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    return False


def run_demo(settings: Settings, console: Console, out: Console, requests: int = 16, max_tokens: int = 32) -> int:
    """Start what is needed, drive traffic through the slice, print what happened; return an exit code."""
    from atalaia.cli.supervisor import Supervisor
    from atalaia.kafka import broker
    from atalaia.models.prepare import prepare_embedder, prepare_generator
    from atalaia.storage.db import get_engine, upgrade
    from atalaia.topics import ensure_topics
    from producers.simulator import simulate

    console.rule("[bold]Atalaia demo")
    started_kafka = not broker.status(settings).running
    console.print("1/6 Kafka (KRaft, local)")
    broker.start(settings, console=console)
    ensure_topics(settings)
    console.print(f"2/6 database {settings.database_url}")
    upgrade(settings.database_url)
    console.print("3/6 models")
    prepare_generator(settings, console=console)
    prepare_embedder(settings, console=console)

    rules_path = settings.home / "demo_rules.yaml"
    rules_path.write_text(resources.files("monitors").joinpath("demo_rules.yaml").read_text())
    env = {"ATALAIA_RULES_FILE": str(rules_path)}
    sup = Supervisor(["serve", "worker", "monitor"], settings.home / "logs", env=env)
    engine = get_engine(settings.database_url)
    code = 0
    t0 = time.time()
    try:
        console.print(f"4/6 services: inference, worker, monitor (logs in {settings.home / 'logs'})")
        sup.start()
        base = f"http://{settings.inference_host}:{settings.inference_port}"
        if not _wait_http(f"{base}/healthz", 120):
            console.print("[red]inference service did not come up; see its log[/red]")
            return 1
        with engine.connect() as conn:
            before = conn.execute(select(func.count()).select_from(t.inference_events)).scalar_one()
            alerts_before = conn.execute(select(func.count()).select_from(t.alerts)).scalar_one()

        console.print(f"5/6 traffic: {requests} simulated questions")
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=console) as progress:
            sent = progress.add_task("requests answered", total=requests)
            stored = progress.add_task("events stored", total=requests)

            def on_answer(i: int) -> None:
                progress.update(sent, completed=i + 1)
                sup.check()  # restart a crashed service while traffic flows

            result = simulate(
                base,
                requests,
                0.0,
                settings.model_version,
                max_tokens,
                on_response=lambda i, _r: on_answer(i),
            )
            deadline = time.monotonic() + 90
            n = 0
            while time.monotonic() < deadline:
                with engine.connect() as conn:
                    n = conn.execute(select(func.count()).select_from(t.inference_events)).scalar_one() - before
                progress.update(stored, completed=min(n, requests))
                if n >= result.ok:
                    break
                time.sleep(0.5)
        console.print("6/6 waiting for the monitor's verdict")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                firing = conn.execute(
                    select(func.count()).select_from(t.alerts).where(t.alerts.c.state == "firing")
                ).scalar_one()
                n_alerts = conn.execute(select(func.count()).select_from(t.alerts)).scalar_one() - alerts_before
            if firing and n_alerts:
                break
            time.sleep(1)

        _summary(out, engine, result, t0)
        if result.failed or n < result.ok:
            code = 1
    finally:
        sup.stop()
        if started_kafka:
            broker.stop(settings)
    return code


def _summary(out: Console, engine, result, since: float) -> None:  # type: ignore[no-untyped-def]
    from datetime import UTC, datetime

    since_dt = datetime.fromtimestamp(since, UTC)
    lat = sorted(result.latencies_ms)
    out.rule("[bold]What happened")
    p50 = lat[len(lat) // 2] if lat else float("nan")
    out.print(f"requests: {result.sent} sent, {result.ok} answered, {result.failed} failed; client p50 {p50:.0f} ms")
    with engine.connect() as conn:
        n_events = conn.execute(
            select(func.count()).select_from(t.inference_events).where(t.inference_events.c.ts >= since_dt)
        ).scalar_one()
        rows = conn.execute(
            select(t.metrics.c.name, func.count(), func.avg(t.metrics.c.value), func.max(t.metrics.c.value))
            .where(t.metrics.c.ts >= since_dt)
            .group_by(t.metrics.c.name)
            .order_by(t.metrics.c.name)
        ).all()
        alert_rows = (
            conn.execute(select(t.alerts).where(t.alerts.c.ts >= since_dt).order_by(t.alerts.c.ts)).mappings().all()
        )
    out.print(f"inference events stored: {n_events}")
    table = Table("metric", "rows", "mean", "max", title="metrics")
    for name, count, mean, mx in rows:
        table.add_row(name, str(count), f"{mean:.4g}", f"{mx:.4g}")
    out.print(table)
    at = Table("time", "rule", "state", "value", "threshold", title="alert transitions")
    for a in alert_rows:
        at.add_row(
            str(a["ts"])[11:19],
            a["rule"],
            a["state"],
            "-" if a["value"] is None else f"{a['value']:.0f}",
            f"{a['threshold']:.0f}",
        )
    out.print(at if alert_rows else "no alert transitions (the traffic met every rule)")
