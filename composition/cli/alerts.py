"""``atalaia alerts``: list, silence and acknowledge alerts, directly on the database.

Registered on the main ``atalaia`` app by :mod:`composition.cli.main`. The logic lives in
:mod:`monitors.alerts` and :mod:`monitors.silences`; this module parses options and prints.
Run bare, ``atalaia alerts`` lists the latest alert transitions (as ``atalaia alerts list``).
"""

from __future__ import annotations

import getpass
import json
import os
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from rich.table import Column, Table

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from monitors.silences import Silence

app = typer.Typer(
    help="List, silence and acknowledge alerts (on ATALAIA_DATABASE_URL). Bare: the latest transitions.",
    invoke_without_command=True,
)

JsonOpt = Annotated[bool, typer.Option("--json", help="JSON lines instead of a table.")]


def _default_user() -> str:
    try:
        return os.environ.get("USER") or getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        return "unknown"


ByOpt = Annotated[Optional[str], typer.Option("--by", help="Who does it (default: $USER).")]  # noqa: UP045


def _engine() -> Engine:
    from atalaia.storage.db import get_engine
    from composition.cli.main import _settings

    return get_engine(_settings().database_url)


def _fail(message: str, code: int = 1) -> typer.Exit:
    from composition.cli.main import _fail as fail

    return fail(message, code)


def _out() -> Any:
    from composition.cli.main import out

    return out


@app.callback()
def alerts(ctx: typer.Context) -> None:
    """List, silence and acknowledge alerts."""
    if ctx.invoked_subcommand is None:
        list_alerts(
            state=None, rule=None, severity=None, model_version=None, since=None, current=False, limit=50, as_json=False
        )


@app.command("list")
def list_alerts(
    state: Annotated[Optional[str], typer.Option(help="pending, firing or resolved.")] = None,  # noqa: UP045
    rule: Annotated[Optional[str], typer.Option(help="Only this rule.")] = None,  # noqa: UP045
    severity: Annotated[Optional[str], typer.Option(help="info, warning or critical.")] = None,  # noqa: UP045
    model_version: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--model-version", help="Only alerts with this model_version label."),
    ] = None,
    since: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="Only transitions since then: a duration back from now (30m, 2h, 7d) or an ISO time."),
    ] = None,
    current: Annotated[
        bool, typer.Option("--current", help="Only each alert's latest transition (with --state firing: firing now).")
    ] = False,
    limit: Annotated[int, typer.Option(help="Most rows to show.")] = 50,
    as_json: JsonOpt = False,
) -> None:
    """List alert transitions, newest first, with who acknowledged them."""
    from atalaia.deadletter import parse_since
    from monitors.alerts import STATES, AlertFilter
    from monitors.alerts import list_alerts as query

    if state and state not in STATES:
        raise _fail(f"--state must be one of {', '.join(STATES)}", 2)
    try:
        when = parse_since(since) if since else None
    except ValueError as exc:
        raise _fail(str(exc), 2) from None
    where = AlertFilter(
        state=state,
        rule=rule,
        severity=severity,
        model_version=model_version,
        since=when,
        current=current,
        limit=limit,
    )
    rows = query(_engine(), where)
    out = _out()
    if as_json:
        for row in rows:
            out.print(json.dumps(row, default=str), soft_wrap=True)
        return
    table = Table("time", "alert id", "rule", "state", "severity", "value", "threshold", "labels", "ack")
    for row in rows:
        value = "-" if row["value"] is None else f"{row['value']:.4g}"
        threshold = "-" if row["threshold"] is None else f"{row['threshold']:.4g}"
        labels = ",".join(f"{k}={v}" for k, v in row["labels"].items() if k != "alertname")
        ack = row["ack"]["by"] if row["ack"] else ""
        table.add_row(
            str(row["ts"])[:19],
            row["alert_id"][:8],
            row["rule"],
            row["state"],
            row["severity"],
            value,
            threshold,
            labels,
            ack,
        )
    out.print(table)


@app.command("silence")
def silence(
    matchers: Annotated[
        list[str], typer.Argument(help="NAME=VALUE matchers, all of which must match: rule=NAME, model_version=V, ...")
    ],
    duration: Annotated[str, typer.Option(help="How long: 90s, 30m, 2h, 1d.")] = "2h",
    comment: Annotated[str, typer.Option(help="Why.")] = "",
    by: ByOpt = None,
    start: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="Start later than now: ISO 8601 time (UTC without an offset)."),
    ] = None,
) -> None:
    """Mute notifications of matching alerts for a while (evaluation and storage go on)."""
    from atalaia.deadletter import parse_since
    from monitors.silences import SilenceError, create_silence, parse_duration, parse_matchers

    try:
        parsed = parse_matchers(matchers)
        seconds = parse_duration(duration)
        starts_at = parse_since(start) if start else None
        who = by or _default_user()
        created = create_silence(
            _engine(), parsed, created_by=who, comment=comment, duration_s=seconds, starts_at=starts_at
        )
    except (SilenceError, ValueError) as exc:
        raise _fail(str(exc), 2) from None
    _out().print(created.silence_id)
    from composition.cli.main import console

    console.print(
        f"silenced {', '.join(f'{k}={v}' for k, v in created.matchers.items())} "
        f"from {created.starts_at:%Y-%m-%d %H:%M:%S} until {created.ends_at:%Y-%m-%d %H:%M:%S} UTC"
    )


def _silence_row(s: Silence) -> list[str]:
    from atalaia.events import utcnow

    return [
        s.silence_id,
        s.state(utcnow()),
        ",".join(f"{k}={v}" for k, v in s.matchers.items()),
        f"{s.starts_at:%Y-%m-%d %H:%M:%S}",
        f"{s.ends_at:%Y-%m-%d %H:%M:%S}",
        s.created_by,
        s.comment,
    ]


@app.command("silences")
def silences(
    show_all: Annotated[bool, typer.Option("--all", help="Include expired silences.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """List silences, newest first: pending and active ones (all with --all)."""
    from monitors.silences import list_silences

    rows = list_silences(_engine(), include_expired=show_all)
    out = _out()
    if as_json:
        for s in rows:
            out.print(json.dumps(s.to_dict()), soft_wrap=True)
        return
    columns = ("state", "matchers", "starts (UTC)", "ends (UTC)", "by", "comment")
    table = Table(Column("silence id", no_wrap=True), *columns)
    for s in rows:
        table.add_row(*_silence_row(s))
    out.print(table)


@app.command("unsilence")
def unsilence(silence_id: Annotated[str, typer.Argument(help="Id of the silence to expire.")]) -> None:
    """Expire a silence now."""
    from monitors.silences import SilenceError, expire_silence

    try:
        expired = expire_silence(_engine(), silence_id)
    except SilenceError as exc:
        raise _fail(str(exc)) from None
    from composition.cli.main import console

    console.print(f"silence {expired.silence_id} expired")


@app.command("ack")
def ack(
    alert_id: Annotated[str, typer.Argument(help="Id of the alert (its alert_id, shared by its transitions).")],
    by: ByOpt = None,
    comment: Annotated[str, typer.Option(help="Why, or what is being done.")] = "",
) -> None:
    """Acknowledge an alert: it is marked as seen and no longer re-notified while firing."""
    from monitors.alerts import AlertNotFound, ack_alert

    engine = _engine()
    try:
        stored = ack_alert(engine, _full_alert_id(engine, alert_id), by or _default_user(), comment)
    except AlertNotFound as exc:
        raise _fail(str(exc)) from None
    except ValueError as exc:
        raise _fail(str(exc), 2) from None
    from composition.cli.main import console

    console.print(f"alert {alert_id} acknowledged by {stored['by']} at {stored['ts']:%Y-%m-%d %H:%M:%S} UTC")


def _full_alert_id(engine: Engine, prefix: str) -> str:
    """The alert id that starts with ``prefix`` (the list shows 8 characters), if exactly one does."""
    from sqlalchemy import select

    from atalaia.storage import tables as t

    if len(prefix) >= 36:
        return prefix
    with engine.connect() as conn:
        ids = {
            r[0]
            for r in conn.execute(
                select(t.alerts.c.alert_id).where(t.alerts.c.alert_id.startswith(prefix, autoescape=True)).limit(50)
            )
        }
    if len(ids) > 1:
        raise _fail(f"alert id prefix {prefix!r} is ambiguous ({len(ids)} alerts); give more characters", 2)
    return ids.pop() if ids else prefix
