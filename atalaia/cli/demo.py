"""``atalaia demo``: the closed loop end to end on embedded defaults, with a live terminal view.

Start Kafka, SQLite, inference, worker, monitor and scheduler; send ``normal`` traffic; move to
``drift`` traffic (specialised questions, off-topic and toxic prompts, long answers) with user
feedback; monitors fire; an alert with ``action: retrain`` makes the scheduler fine-tune, gate,
quantize and deploy a new version, which inference swaps in under live traffic; ``recovered``
traffic then scores better and alerts resolve. At the end an HTML report is written to
``$ATALAIA_HOME/reports/`` and a summary is printed.
"""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from typing import Any

import httpx
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from sqlalchemy import Engine, func, select

from atalaia.cli.demo_scenario import load_off_topic, load_qa, phase_mixes, plan_question
from atalaia.settings import Settings
from atalaia.storage import tables as t

SYSTEM_PROMPT = "You are the company's regulations assistant. Answer briefly."


@dataclass(frozen=True)
class DemoPlan:
    """Sizes and service settings of one demo run."""

    name: str
    normal_requests: int
    drift_timeout_s: float
    recovered_requests: int
    resolve_timeout_s: float
    max_tokens: int
    long_tokens: int
    env: dict[str, str]


def _env(lora_steps: int, eval_limit: int, drift_ref: int, drift_window: int, drift_stride: int) -> dict[str, str]:
    # Small windows so that a few minutes of traffic show the whole loop; see docs/demo.md.
    return {
        "ATALAIA_DRIFT_REFERENCE_SIZE": str(drift_ref),
        "ATALAIA_DRIFT_WINDOW_SIZE": str(drift_window),
        "ATALAIA_DRIFT_STRIDE": str(drift_stride),
        "ATALAIA_DRIFT_TARGET_ARL": "200",
        "ATALAIA_SAMPLE_RATES": '{"perplexity": 0.25}',
        "ATALAIA_RETRAIN_CRON": "",
        "ATALAIA_RETRAIN_COOLDOWN_S": "0",
        "ATALAIA_RETRAIN_MIN_FEEDBACK": "5",
        "ATALAIA_RETRAIN_EVAL_LIMIT": str(eval_limit),
        "ATALAIA_LORA_STEPS": str(lora_steps),
        "ATALAIA_LORA_BATCH_SIZE": "4",
        # A few minutes of CPU training on a 2-core machine move the holdout little: the demo
        # promotes a candidate that is at least as good, and leaves the rest to the canary on
        # live traffic. bench/retrain.py measures what the default 60 steps achieve.
        "ATALAIA_GATE_MIN_IMPROVEMENT": "0",
        "ATALAIA_CANARY_MIN_EVENTS": "8",
        "ATALAIA_CANARY_INTERVAL_S": "10",
        "ATALAIA_CANARY_WINDOW_S": "240",
        "ATALAIA_TORCH_THREADS": "1",
    }


PLANS = {
    "full": DemoPlan("full", 45, 900.0, 40, 90.0, 32, 128, _env(24, 8, 30, 20, 5)),
    "quick": DemoPlan("quick", 20, 600.0, 12, 40.0, 24, 96, _env(8, 3, 20, 12, 4)),
}


@dataclass
class DemoState:
    """What the traffic thread did, read by the live view."""

    phase: str = "starting"
    phase_started: float = field(default_factory=time.monotonic)
    sent: int = 0
    ok: int = 0
    failed: int = 0
    feedback: int = 0
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=30))
    answered_at: deque[float] = field(default_factory=lambda: deque(maxlen=200))
    served_version: str = ""
    first_version: str = ""
    swapped_at: float | None = None
    phases: list[tuple[str, datetime]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def enter(self, phase: str) -> None:
        self.phase = phase
        self.phase_started = time.monotonic()
        self.phases.append((phase, datetime.now(UTC)))


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


def _served_version(client: httpx.Client) -> str:
    try:
        return str(client.get("/v1/models", timeout=5).json()["data"][0]["id"])
    except (httpx.HTTPError, KeyError, IndexError, ValueError):
        return ""


def _ask(client: httpx.Client, state: DemoState, question: Any) -> None:
    body: dict[str, Any] = {
        "model": state.served_version,
        "messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": question.text}],
        "max_tokens": question.max_tokens,
    }
    if question.reference:
        body["metadata"] = {"reference": question.reference}
    started = time.perf_counter()
    state.sent += 1
    try:
        resp = client.post("/v1/chat/completions", json=body)
    except httpx.HTTPError as exc:
        state.failed += 1
        state.errors.append(f"{type(exc).__name__}: {exc}")
        time.sleep(1.0)  # a restarting service: do not spin
        return
    state.latencies.append((time.perf_counter() - started) * 1000)
    if resp.status_code != 200:
        state.failed += 1
        state.errors.append(f"HTTP {resp.status_code}: {resp.text[:200]}")
        if state.failed > 20 and state.failed > state.ok:
            state.stop.set()  # the service refuses everything: stop and report instead of spinning
        time.sleep(1.0)
        return
    state.ok += 1
    state.answered_at.append(time.monotonic())
    if question.feedback and question.reference:
        # The user corrects the answer: the retraining dataset is built from these.
        fb = client.post(
            "/v1/feedback",
            json={"completion_id": resp.json()["id"], "rating": -1, "corrected_answer": question.reference},
        )
        if fb.status_code == 202:
            state.feedback += 1


def _retraining(engine: Engine) -> bool:
    with engine.connect() as conn:
        return (
            conn.execute(
                select(func.count()).select_from(t.retrain_runs).where(t.retrain_runs.c.status == "running")
            ).scalar_one()
            > 0
        )


def _traffic(base: str, plan: DemoPlan, state: DemoState, on_request: Any, engine: Engine) -> None:
    """The traffic thread: normal → drift (until a new version serves) → recovered."""
    rng = random.Random(7)
    mixes = phase_mixes(load_qa(), load_off_topic())
    with httpx.Client(base_url=base, timeout=180) as client:
        state.first_version = state.served_version = _served_version(client)
        state.enter("normal")
        for _ in range(plan.normal_requests):
            if state.stop.is_set():
                return
            _ask(client, state, plan_question(mixes["normal"], rng, plan.max_tokens, plan.long_tokens))
            on_request()
        state.enter("drift")
        deadline = time.monotonic() + plan.drift_timeout_s
        while not state.stop.is_set() and time.monotonic() < deadline:
            _ask(client, state, plan_question(mixes["drift"], rng, plan.max_tokens, plan.long_tokens))
            on_request()
            version = _served_version(client)
            if version and version != state.first_version:
                state.served_version, state.swapped_at = version, time.monotonic()
                break
            if _retraining(engine):
                # Live traffic goes on during training, at a pace that leaves the CPU to it.
                state.stop.wait(3.0)
        if state.swapped_at is None:
            state.enter("no new version")
            return
        state.enter("recovered")
        for _ in range(plan.recovered_requests):
            if state.stop.is_set():
                return
            _ask(client, state, plan_question(mixes["recovered"], rng, plan.max_tokens, plan.long_tokens))
            on_request()
            state.served_version = _served_version(client) or state.served_version
        state.enter("settling")


def _db_view(engine: Engine, since: datetime) -> dict[str, Any]:
    """Recent metric levels, open alerts and the latest retrain run, for the live view."""
    view: dict[str, Any] = {}
    with engine.connect() as conn:
        for name in ("rougeL", "toxicity_prompt", "latency_ms", "embedding_drift"):
            values = [
                r[0]
                for r in conn.execute(
                    select(t.metrics.c.value)
                    .where(t.metrics.c.name == name, t.metrics.c.ts >= since, t.metrics.c.value.is_not(None))
                    .order_by(t.metrics.c.ts.desc())
                    .limit(20)
                )
            ]
            view[name] = sum(values) / len(values) if values else None
        latest = (
            select(t.alerts.c.fingerprint, func.max(t.alerts.c.ts).label("ts"))
            .where(t.alerts.c.ts >= since)
            .group_by(t.alerts.c.fingerprint)
            .subquery()
        )
        rows = conn.execute(
            select(t.alerts.c.rule, t.alerts.c.state, t.alerts.c.labels).join(
                latest, (t.alerts.c.fingerprint == latest.c.fingerprint) & (t.alerts.c.ts == latest.c.ts)
            )
        ).all()
        view["alerts"] = [(r.rule, r.state, (r.labels or {}).get("model_version", "")) for r in rows]
        view["fired"] = conn.execute(
            select(func.count()).select_from(t.alerts).where(t.alerts.c.ts >= since, t.alerts.c.state == "firing")
        ).scalar_one()
        run = (
            conn.execute(
                select(t.retrain_runs)
                .where(t.retrain_runs.c.started_at >= since)
                .order_by(t.retrain_runs.c.started_at.desc())
            )
            .mappings()
            .first()
        )
        view["run"] = dict(run) if run else None
    return view


def _render(plan: DemoPlan, state: DemoState, view: dict[str, Any], started: float) -> Any:
    now = time.monotonic()
    rate = sum(1 for ts in state.answered_at if now - ts <= 30) / 30.0
    lat = sorted(state.latencies)
    p95 = lat[min(len(lat) - 1, int(0.95 * len(lat)))] if lat else None

    def fmt(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    head = Table.grid(padding=(0, 2))
    head.add_row(
        f"[bold]phase[/bold] {state.phase} ({now - state.phase_started:.0f} s)",
        f"[bold]elapsed[/bold] {now - started:.0f} s",
        f"[bold]model[/bold] {state.served_version or '-'}",
    )
    head.add_row(
        f"requests {state.ok}/{state.sent} ok, {state.failed} failed",
        f"rate {rate:.2f}/s, client p95 {fmt(p95, '.0f')} ms",
        f"feedback {state.feedback}",
    )
    metrics = Table("ROUGE-L", "toxicity (prompt)", "latency (ms)", "drift score", title="last 20 scores", expand=True)
    metrics.add_row(
        fmt(view.get("rougeL"), ".3f"),
        fmt(view.get("toxicity_prompt"), ".3f"),
        fmt(view.get("latency_ms"), ".0f"),
        fmt(view.get("embedding_drift"), ".4f"),
    )
    alerts = Table("rule", "state", "model version", title=f"alerts ({view.get('fired', 0)} fired)", expand=True)
    for rule, st, version in sorted(view.get("alerts", [])):
        colour = {"firing": "red", "pending": "yellow", "resolved": "green"}.get(st, "white")
        alerts.add_row(rule, f"[{colour}]{st}[/{colour}]", version)
    run = view.get("run")
    if run:
        steps = " → ".join(f"{s['name']}{'…' if s['status'] == 'running' else ''}" for s in run["steps"] or [])
        retrain = f"retrain {run['status']} ({run['trigger']}): {steps or 'checks'}"
    else:
        retrain = "retrain: none yet"
    return Panel(Group(head, metrics, alerts, retrain), title=f"Atalaia demo ({plan.name})")


def run_demo(settings: Settings, console: Console, out: Console, quick: bool = False) -> int:
    """Run the closed-loop demo; return an exit code (0 when the loop closed)."""
    from atalaia.cli.supervisor import Supervisor
    from atalaia.kafka import broker
    from atalaia.models.prepare import prepare_embedder, prepare_generator
    from atalaia.storage.db import get_engine, upgrade
    from atalaia.topics import ensure_topics

    plan = PLANS["quick" if quick else "full"]
    console.rule(f"[bold]Atalaia demo: the closed loop ({plan.name})")
    started_kafka = not broker.status(settings).running
    console.print("1/5 Kafka (KRaft, local)")
    broker.start(settings, console=console)
    ensure_topics(settings)
    console.print(f"2/5 database {settings.database_url}")
    upgrade(settings.database_url)
    console.print("3/5 models")
    prepare_generator(settings, console=console)
    prepare_embedder(settings, console=console)

    rules_path = settings.home / "closed_loop_rules.yaml"
    rules_path.write_text(resources.files("monitors").joinpath("closed_loop_rules.yaml").read_text())
    env = {"ATALAIA_RULES_FILE": str(rules_path), **plan.env}
    services = ["serve", "worker", "monitor", "scheduler"]
    sup = Supervisor(services, settings.home / "logs", env=env)
    engine = get_engine(settings.database_url)
    state = DemoState()
    since = datetime.now(UTC)
    started = time.monotonic()
    code = 1
    try:
        console.print(f"4/5 services: {', '.join(services)} (logs in {settings.home / 'logs'})")
        sup.start()
        base = f"http://{settings.inference_host}:{settings.inference_port}"
        if not _wait_http(f"{base}/healthz", 180):
            console.print("[red]inference service did not come up; see its log[/red]")
            return 1
        console.print("5/5 traffic: normal → drift (+ feedback) → retrain → recovered")
        traffic = threading.Thread(target=_traffic, args=(base, plan, state, sup.check, engine), daemon=True)
        traffic.start()
        with Live(_render(plan, state, {}, started), console=console, refresh_per_second=2) as live:
            settle_deadline: float | None = None
            while True:
                view = _db_view(engine, since)
                live.update(_render(plan, state, view, started))
                sup.check()
                if not traffic.is_alive():
                    if state.swapped_at is None:
                        break
                    settle_deadline = settle_deadline or time.monotonic() + plan.resolve_timeout_s
                    open_alerts = [a for a in view["alerts"] if a[1] == "firing" and a[2] == state.served_version]
                    if not open_alerts or time.monotonic() > settle_deadline:
                        break
                time.sleep(1.0)
        code = 0 if state.swapped_at is not None else 1
        _finish(settings, engine, out, state, since, started)
    finally:
        state.stop.set()
        sup.stop()
        if started_kafka:
            broker.stop(settings)
    return code


def _finish(
    settings: Settings, engine: Engine, out: Console, state: DemoState, since: datetime, started: float
) -> None:
    """Print the summary and write the HTML report."""
    out.rule("[bold]What happened")
    out.print(
        f"{time.monotonic() - started:.0f} s; requests {state.ok} answered, {state.failed} failed; "
        f"feedback {state.feedback}; phases: " + " → ".join(p for p, _ in state.phases)
    )
    if state.errors:
        out.print(f"first error: {state.errors[0]}")
    with engine.connect() as conn:
        runs = (
            conn.execute(
                select(t.retrain_runs).where(t.retrain_runs.c.started_at >= since).order_by(t.retrain_runs.c.started_at)
            )
            .mappings()
            .all()
        )
    for run in runs:
        gate = next((s for s in run["steps"] or [] if s["name"] == "gate"), None)
        out.print(f"retrain run {run['run_id'][:8]}: {run['status']} (trigger {run['trigger']})")
        if gate:
            details = gate.get("details", {})
            out.print(f"  gate: active {details.get('active')} → candidate {details.get('candidate')}")
            for reason in details.get("reasons", []):
                out.print(f"  reason: {reason}")
    from atalaia.cli.report import summary_tables
    from atalaia.report import build_report, summarize

    for table in summary_tables(summarize(engine, since)):
        out.print(table)
    path = build_report(engine, settings, since=since)
    out.print(f"report: {path}")
