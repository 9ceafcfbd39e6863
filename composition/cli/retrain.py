"""``atalaia retrain`` and ``atalaia scheduler``: the retraining loop from the terminal."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

console = Console(stderr=True)
out = Console()

#: Exit codes of ``atalaia retrain --now``: scripts and the scheduler read them.
EXIT_CODES = {"deployed": 0, "rejected": 4, "skipped": 5, "failed": 1}


def retrain(
    now: Annotated[bool, typer.Option("--now", help="Start a run now (otherwise list recent runs).")] = False,
    force: Annotated[bool, typer.Option("--force", help="Ignore the cooldown and the minimum of new data.")] = False,
    trigger: Annotated[str, typer.Option(help="Why this run starts; stored with the run.")] = "manual",
    limit: Annotated[int, typer.Option(help="Runs listed (without --now).")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Run a retraining (dataset → LoRA → quantize → gate → register → deploy), or list runs.

    With --now the exit status says how the run ended: 0 deployed, 4 rejected by the gate, 5 skipped
    (another run, cooldown, not enough new data), 1 failed.
    """
    from atalaia.storage.db import get_engine, upgrade
    from composition.cli.main import _settings

    settings = _settings()
    upgrade(settings.database_url)
    if now:
        import signal

        from retrain.runner import run_retrain

        def _stop(*_: object) -> None:
            # SIGTERM (the scheduler stopping) ends the run like Ctrl-C: recorded as failed, lock released.
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, _stop)

        outcome = run_retrain(settings, trigger=trigger, force=force)
        summary = {
            "run_id": outcome.run_id,
            "status": outcome.status,
            "reason": outcome.reason,
            "candidate_version": outcome.candidate_version,
        }
        if as_json:
            out.print_json(json.dumps({**summary, **outcome.details}, default=str))
        else:
            colour = {"deployed": "green", "rejected": "yellow", "skipped": "cyan"}.get(outcome.status, "red")
            out.print(f"[{colour}]{outcome.status}[/{colour}] run {outcome.run_id}")
            if outcome.candidate_version:
                out.print(f"candidate: {outcome.candidate_version}")
            if outcome.reason:
                out.print(f"reason: {outcome.reason}")
        raise typer.Exit(EXIT_CODES.get(outcome.status, 1))

    from retrain.runs import recent_runs

    runs = recent_runs(get_engine(settings.database_url), limit)
    if as_json:
        out.print_json(json.dumps(runs, default=str))
        return
    table = Table(title="retrain runs (newest first)")
    for col in ("started", "status", "trigger", "candidate", "steps", "error / reason"):
        table.add_column(col)
    for run in runs:
        steps = ", ".join(f"{s['name']}:{s['status']}" for s in run["steps"] or [])
        reason = (run["error"] or (run["metrics"] or {}).get("skip_reason") or "").splitlines()[:1]
        table.add_row(
            str(run["started_at"])[:19],
            run["status"],
            run["trigger"],
            run["candidate_version"] or "",
            steps,
            reason[0][:80] if reason else "",
        )
    out.print(table)


def scheduler() -> None:
    """Run the retraining scheduler: periodic check, alert-triggered runs, canary after deploys."""
    import signal
    import threading

    from atalaia.settings import ConfigError
    from composition.cli.main import _fail, _settings
    from retrain.scheduler import run_scheduler

    settings = _settings()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        run_scheduler(settings, stop)
    except ConfigError as exc:  # e.g. Kafka refused the SASL credentials: the message names the setting
        raise _fail(str(exc), 2) from None
