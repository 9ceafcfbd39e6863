"""``atalaia feedback review list|approve|reject``: the review queue of corrected answers.

Registered on the main ``atalaia`` app by :mod:`composition.cli.main`. The logic lives in
:mod:`retrain.review`; this module only parses options and prints. With
``ATALAIA_FEEDBACK_REVIEW=true`` only approved corrections train.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Optional

import typer
from rich.table import Table

app = typer.Typer(help="Users' feedback: review corrected answers before they train the model.", no_args_is_help=True)
review_app = typer.Typer(
    help="List pending corrections, approve or reject them (only approved ones train when "
    "ATALAIA_FEEDBACK_REVIEW=true; rejected ones never train).",
    no_args_is_help=True,
)
app.add_typer(review_app, name="review")

IdsArg = Annotated[list[str], typer.Argument(help="Feedback event ids (or unique prefixes of 8+ characters).")]
ByOpt = Annotated[str, typer.Option("--by", help="Who decides (recorded with the decision).")]


def _engine():  # type: ignore[no-untyped-def]
    from atalaia.storage.db import get_engine, has_schema
    from composition.cli.main import _fail, _settings

    settings = _settings()
    if not has_schema(settings.database_url):
        raise _fail("no tables: run `atalaia db upgrade` first", 2)
    return settings, get_engine(settings.database_url)


def _shorten(text: str, width: int = 70) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


@review_app.command("list")
def list_pending(
    limit: Annotated[int, typer.Option(min=1, help="Most corrections shown (oldest first).")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line instead of a table.")] = False,
) -> None:
    """Corrections waiting for a decision, oldest first, with what the training filter would say
    of each (``ok`` or its reason: toxic, pii, near_duplicate, outlier, too_short, too_long)."""
    from retrain.feedback_filter import FeedbackFilter, build_filter_inputs, filter_feedback
    from retrain.review import counts, pending

    settings, engine = _engine()
    rows = pending(engine, limit)
    verdicts: dict[str, str] = {}
    if rows:
        pairs = [{"id": r.id, "question": r.question, "answer": r.corrected_answer} for r in rows]
        result = filter_feedback(pairs, FeedbackFilter.from_settings(settings), **build_filter_inputs(settings))
        verdicts = {r.id: f"{r.reason}: {r.detail}" if r.detail else r.reason for r in result.rejected}
    if as_json:
        for r in rows:
            record = {
                "id": r.id,
                "ts": r.ts.isoformat(),
                "caller": r.caller,
                "subject_id": r.subject_id,
                "question": r.question,
                "response": r.response,
                "corrected_answer": r.corrected_answer,
                "filter": verdicts.get(r.id, "ok"),
            }
            sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")
        return
    table = Table(title=f"pending corrections ({json.dumps(counts(engine))})")
    for col in ("id", "ts", "caller", "question", "corrected answer", "filter"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(
            r.id,
            r.ts.strftime("%Y-%m-%d %H:%M"),
            r.caller or "-",
            _shorten(r.question),
            _shorten(r.corrected_answer),
            verdicts.get(r.id, "ok"),
        )
    from rich.console import Console

    Console(width=200).print(table)
    if not settings.feedback_review:
        typer.echo("note: ATALAIA_FEEDBACK_REVIEW is off: pending corrections train without approval", err=True)


def _decide(ids: list[str], state: str, by: str, reason: str | None) -> None:
    from composition.cli.main import _fail
    from retrain.review import decide

    _, engine = _engine()
    try:
        done = decide(engine, ids, state, reviewed_by=by, reason=reason)
    except ValueError as exc:
        raise _fail(str(exc), 2) from None
    for i in done:
        typer.echo(f"{state} {i}")


@review_app.command("approve")
def approve(
    ids: IdsArg,
    by: ByOpt = "cli",
    reason: Annotated[Optional[str], typer.Option(help="Why (recorded).")] = None,  # noqa: UP045
) -> None:
    """Approve corrections: they train in the next retraining run (after the caps and the filter)."""
    _decide(ids, "approved", by, reason)


@review_app.command("reject")
def reject(
    ids: IdsArg,
    by: ByOpt = "cli",
    reason: Annotated[Optional[str], typer.Option(help="Why (recorded).")] = None,  # noqa: UP045
) -> None:
    """Reject corrections: they never train, review mode on or off."""
    _decide(ids, "rejected", by, reason)
