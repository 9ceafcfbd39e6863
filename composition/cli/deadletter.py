"""``atalaia deadletter list|replay``: inspect the dead-letter topic and replay its messages.

Registered on the main ``atalaia`` app by :mod:`composition.cli.main`. The logic lives in
:mod:`atalaia.deadletter`; this module only parses options and prints.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.table import Table

if TYPE_CHECKING:
    from atalaia.deadletter import DeadLetterFilter, DeadLetterRecord
    from atalaia.settings import Settings

app = typer.Typer(
    help="Inspect the dead-letter topic and replay its messages to their source topics.", no_args_is_help=True
)

SinceOpt = Annotated[
    Optional[str],  # noqa: UP045 - typer needs Optional
    typer.Option(help="Only records dead-lettered since then: a duration back from now (30m, 2h, 7d) or ISO time."),
]
ReasonOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(help="Only records whose reason contains this text (case-insensitive)."),
]
SourceOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option("--source-topic", help="Only records from this topic (full name, or inference, feedback, ...)."),
]
GroupOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(help="Consumer group that records replays (default <namespace>.deadletter-replay)."),
]
TimeoutOpt = Annotated[float, typer.Option(help="Seconds allowed for reading the topic.")]


def _filter(settings: Settings, since: str | None, reason: str | None, source_topic: str | None) -> DeadLetterFilter:
    from atalaia.deadletter import DeadLetterFilter, parse_since
    from atalaia.topics import TOPICS
    from composition.cli.main import _fail

    try:
        when = parse_since(since) if since else None
    except ValueError as exc:
        raise _fail(str(exc), 2) from None
    topic = settings.topic(source_topic) if source_topic in TOPICS else source_topic
    return DeadLetterFilter(since=when, reason=reason or None, source_topic=topic or None)


def _source(rec: DeadLetterRecord) -> str:
    ev = rec.event
    if ev is None:
        return "-"
    where = f"[{ev.source_partition}]" if ev.source_partition is not None else ""
    at = f"@{ev.source_offset}" if ev.source_offset is not None else ""
    return f"{ev.source_topic}{where}{at}"


@app.command("list")
def list_command(
    since: SinceOpt = None,
    reason: ReasonOpt = None,
    source_topic: SourceOpt = None,
    limit: Annotated[int, typer.Option(help="Most records to show (newest first); 0 shows all.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines (every field) instead of a table.")] = False,
    group: GroupOpt = None,
    timeout: TimeoutOpt = 30.0,
) -> None:
    """List dead-letter records, newest first: reason, source, time and a preview of the message."""
    from atalaia.deadletter import list_dead_letters
    from composition.cli.main import _fail, _settings, console, out

    settings = _settings()
    filters = _filter(settings, since, reason, source_topic)
    try:
        records = list_dead_letters(settings, filters, limit or None, group, timeout)
    except Exception as exc:  # noqa: BLE001 - Kafka unreachable, topic missing: a message, not a traceback
        raise _fail(str(exc)) from None
    if as_json:
        for rec in records:
            out.print_json(json.dumps(rec.as_dict()), indent=None)
        return
    table = Table("time", "reason", "source", "consumer", "replayed", "original (preview)")
    for rec in records:
        ev = rec.event
        if ev is None:
            table.add_row("-", f"[red]not a dead-letter record: {rec.error}[/red]", f"p{rec.partition}@{rec.offset}")
            continue
        table.add_row(
            ev.ts.isoformat(timespec="seconds"),
            ev.reason,
            _source(rec),
            ev.consumer or "-",
            "yes" if rec.replayed else "no",
            rec.preview(),
        )
    out.print(table)
    console.print(f"{len(records)} record(s) on {settings.topic('deadletter')}")


@app.command("replay")
def replay_command(
    since: SinceOpt = None,
    reason: ReasonOpt = None,
    source_topic: SourceOpt = None,
    limit: Annotated[int, typer.Option(help="Most records to replay in this run; 0: no limit.")] = 0,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would be replayed; change nothing.")] = False,
    group: GroupOpt = None,
    timeout: TimeoutOpt = 30.0,
) -> None:
    """Re-publish the original bytes of matching records to their source topics, each at most once."""
    from atalaia.deadletter import replay_dead_letters
    from composition.cli.main import _fail, _settings, console, out

    settings = _settings()
    filters = _filter(settings, since, reason, source_topic)
    try:
        report = replay_dead_letters(settings, filters, limit or None, dry_run, group, timeout)
    except Exception as exc:  # noqa: BLE001
        raise _fail(str(exc)) from None
    verb = "would replay" if dry_run else "replayed"
    for rec in report.replayed:
        assert rec.event is not None
        out.print(f"{verb} {_source(rec)} <- p{rec.partition}@{rec.offset}: {rec.event.reason} | {rec.preview(40)}")
    console.print(
        f"{verb} {len(report.replayed)}; already replayed {report.already}; not matching {report.not_matching}; "
        f"deferred by --limit {report.deferred}; unknown topic {report.unknown_topic}; "
        f"unreadable {report.unreadable}; failed {report.failed}"
    )
    if report.failed:
        raise typer.Exit(1)
