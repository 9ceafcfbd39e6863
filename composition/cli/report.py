"""``atalaia report``: write the HTML report of a period and print its key numbers."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

console = Console(stderr=True)
out = Console()

#: ``atalaia report`` (the HTML report of a period) with sub-command ``evidently``.
app = typer.Typer(
    help="Reports over stored data: `atalaia report` (the HTML report of a period), `atalaia report evidently`.",
    invoke_without_command=True,
)


def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.{digits}g}"


def summary_tables(summary: dict[str, Any]) -> list[Table]:
    """Rich tables of a :func:`composition.report.summarize` dict: per version, alerts and deploys, holdout.

    The demo prints the same tables at its end.
    """
    versions = Table(title=f"{summary['start'][:19]} → {summary['end'][:19]} UTC · {summary['requests']:,} requests")
    for column in ("model version", "requests", "latency p95 ms", "ROUGE-L", "toxicity", "cost USD", "drift max/thr"):
        versions.add_column(column, justify="left" if column == "model version" else "right")
    for version, row in summary["versions"].items():
        marker = " (active)" if version == summary.get("active_version") else ""
        versions.add_row(
            version + marker,
            _num(row.get("requests")),
            _num(row.get("latency_p95_ms"), 4),
            _num(row.get("rougeL")),
            _num(row.get("toxicity_response")),
            _num(row.get("cost_usd")),
            f"{_num(row.get('drift_max'))}/{_num(row.get('drift_threshold'))}",
        )
    events = Table(title="alerts, deploys and retraining")
    events.add_column("what")
    events.add_column("detail")
    alerts = summary["alerts"]
    events.add_row("alerts", f"{alerts['fired']} fired, {alerts['resolved']} resolved, {alerts['open']} open")
    for rule, state in alerts["rules"].items():
        colour = {"firing": "red", "resolved": "green"}.get(state, "yellow")
        events.add_row(f"  {rule}", f"[{colour}]{state}[/{colour}]")
    for deploy in summary["deploys"]:
        events.add_row(deploy["kind"], f"{deploy['version']} at {deploy['ts'][11:19]}")
    for run in summary["runs"]:
        detail = f"{run['status']} ({run['trigger']})"
        if run.get("candidate_version"):
            detail += f" → {run['candidate_version']}"
        events.add_row(f"run {run['run_id'][:8]}", detail)
    tables = [versions, events]
    holdout = summary["holdout"]
    if holdout["versions"]:
        table = Table(title=f"holdout: {holdout['source']}")
        table.add_column("metric")
        for version in holdout["versions"]:
            table.add_column(version, justify="right")
        metrics = list(dict.fromkeys(m for v in holdout["versions"] for m in holdout["scores"].get(v, {})))
        for metric in metrics:
            table.add_row(metric, *(_num(holdout["scores"].get(v, {}).get(metric), 4) for v in holdout["versions"]))
        tables.append(table)
    return tables


def _since(since: str | None, minutes: float | None) -> datetime | None:
    from atalaia.events import utcnow
    from atalaia.storage.repository import as_utc

    if since and minutes is not None:
        raise typer.BadParameter("give --since or --minutes, not both")
    if minutes is not None:
        if minutes <= 0:
            raise typer.BadParameter("--minutes must be positive")
        return utcnow() - timedelta(minutes=minutes)
    if since:
        try:
            return as_utc(datetime.fromisoformat(since))
        except ValueError:
            raise typer.BadParameter(f"--since {since!r} is not an ISO 8601 time, e.g. 2026-01-31T09:00:00Z") from None
    return None


@app.callback()
def report(
    ctx: typer.Context,
    since: Annotated[
        Optional[str],  # noqa: UP045 - typer needs Optional
        typer.Option(help="Start of the period, ISO 8601 (UTC when no offset), e.g. 2026-01-31T09:00:00Z."),
    ] = None,
    minutes: Annotated[
        Optional[float],  # noqa: UP045
        typer.Option(help="The last N minutes (instead of --since). Default: the last 24 hours."),
    ] = None,
    out_dir: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--out", help="Folder of the report file. Default: ATALAIA_HOME/reports."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON instead of tables.")] = False,
) -> None:
    """Write a self-contained HTML report (metrics over time, alerts, deploys, holdout scores) and summarize it."""
    if ctx.invoked_subcommand is not None:
        return
    from atalaia.storage.db import get_engine, has_schema, redact_url
    from composition.cli.main import _settings
    from composition.report import build_report, summarize

    start = _since(since, minutes)
    settings = _settings()
    if not has_schema(settings.database_url):
        console.print(
            f"[red]error:[/red] {redact_url(settings.database_url)} has no Atalaia tables; run `atalaia db upgrade`"
        )
        raise typer.Exit(1)
    engine = get_engine(settings.database_url)
    path = build_report(engine, settings, since=start, out_dir=out_dir)
    summary = summarize(engine, start)
    if as_json:
        out.print_json(json.dumps({"report": str(path), **summary}, default=str))
        return
    for table in summary_tables(summary):
        out.print(table)
    out.print(f"report: {path}", soft_wrap=True)


@app.command("evidently")
def evidently(
    since: Annotated[
        Optional[str],  # noqa: UP045 - typer needs Optional
        typer.Option(help="Start of the current period, ISO 8601 (default: ATALAIA_EVIDENTLY_WINDOW_HOURS ago)."),
    ] = None,
    minutes: Annotated[
        Optional[float],  # noqa: UP045
        typer.Option(help="The current period is the last N minutes (instead of --since)."),
    ] = None,
    reference_since: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="Start of the reference period, ISO 8601 (default: as long before --since as the current)."),
    ] = None,
    version: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--version", help="Only the requests served by this model version."),
    ] = None,
    out_dir: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--out", help="Folder of the report files. Default: ATALAIA_HOME/reports/evidently."),
    ] = None,
) -> None:
    """Evidently report of the current period against a reference one: drift of the metric columns and of
    text descriptors of prompts and responses. Writes HTML (opens offline), JSON and a summary; prints the summary."""
    from atalaia.events import utcnow
    from atalaia.storage.db import get_engine, has_schema, redact_url
    from composition.cli.main import _settings
    from composition.report.evidently import build_evidently_report

    settings = _settings()
    start = _since(since, minutes) or utcnow() - timedelta(hours=settings.evidently_window_hours)
    reference = _since(reference_since, None)
    if not has_schema(settings.database_url):
        console.print(
            f"[red]error:[/red] {redact_url(settings.database_url)} has no Atalaia tables; run `atalaia db upgrade`"
        )
        raise typer.Exit(1)
    try:
        summary = build_evidently_report(
            get_engine(settings.database_url),
            settings,
            since=start,
            reference_since=reference,
            version=version,
            out_dir=out_dir,
        )
    except ValueError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    out.print_json(json.dumps({k: v for k, v in summary.items() if k != "columns"}, default=str))
