"""``atalaia privacy export|erase|retention``: data-subject requests and the retention job.

Registered on the main ``atalaia`` app by :mod:`composition.cli.main`. The logic lives in
:mod:`atalaia.privacy`; this module only parses options and prints.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(
    help="Data-subject rights (LGPD/GDPR): export or erase one person's data; apply retention.",
    no_args_is_help=True,
)

SubjectOpt = Annotated[
    Optional[str],  # noqa: UP045 - typer needs Optional
    typer.Option("--subject", help="The end user's id as sent in the request's `user` (hashed with the pepper)."),
]
SubjectIdOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option("--subject-id", help="The stored subject id (the keyed hash) instead of the user id."),
]
ByOpt = Annotated[str, typer.Option("--requested-by", help="Who asked (recorded in the audit table).")]


def _engine_and_subject(subject: str | None, subject_id: str | None):  # type: ignore[no-untyped-def]
    from atalaia.privacy import resolve_subject
    from atalaia.storage.db import get_engine, has_schema
    from composition.cli.main import _fail, _settings

    settings = _settings()
    if not has_schema(settings.database_url):
        raise _fail("no tables: run `atalaia db upgrade` first", 2)
    try:
        sid = resolve_subject(settings, subject, subject_id)
    except ValueError as exc:
        raise _fail(str(exc), 2) from None
    return settings, get_engine(settings.database_url), sid


@app.command("export")
def export(
    subject: SubjectOpt = None,
    subject_id: SubjectIdOpt = None,
    out: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(help="Write the JSON here (default: standard output)."),
    ] = None,
    requested_by: ByOpt = "cli",
) -> None:
    """Write everything held about one subject as JSON: events, metrics, embeddings, feedback,
    spooled events, the data sets and model versions built from their corrections, past requests."""
    from atalaia.privacy import export_subject

    settings, engine, sid = _engine_and_subject(subject, subject_id)
    data = export_subject(engine, settings, sid, requested_by=requested_by)
    text = json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n"
    if out is None:
        sys.stdout.write(text)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
        out.chmod(0o600)  # personal data
        counts = {k: len(v) for k, v in data.items() if isinstance(v, list)}
        typer.echo(f"wrote {out}: {json.dumps(counts)}", err=True)


@app.command("erase")
def erase(
    subject: SubjectOpt = None,
    subject_id: SubjectIdOpt = None,
    requested_by: ByOpt = "cli",
    clear_cache: Annotated[
        bool, typer.Option(help="Clear the inference service's response cache through its admin API.")
    ] = True,
    inference_url: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="Inference service URL (default http://ATALAIA_INFERENCE_HOST:ATALAIA_INFERENCE_PORT)."),
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete one subject's events, metrics, embeddings, feedback and spooled events; clear the
    inference cache; list the data sets and model versions trained on their corrections. Kafka
    topics keep their copies until the topics' retention expires (docs/operations.md)."""
    from atalaia.privacy import erase_subject

    settings, engine, sid = _engine_and_subject(subject, subject_id)
    if not yes and not typer.confirm(f"erase every record of subject {sid[:12]}…?"):
        raise typer.Exit(1)
    report = erase_subject(
        engine, settings, sid, requested_by=requested_by, clear_cache=clear_cache, inference_url=inference_url
    )
    typer.echo(json.dumps({"subject_id": sid, **report.as_dict()}, indent=2))
    if report.model_versions:
        typer.echo(
            f"model versions trained on this subject's corrections: {', '.join(report.model_versions)}; "
            "run `atalaia retrain --now --force` to train a successor without them (the data sets are rebuilt "
            "from the database, where their corrections no longer are).",
            err=True,
        )


@app.command("retention")
def retention(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only print the days kept per table.")] = False,
) -> None:
    """Delete rows older than ATALAIA_RETENTION_DAYS (per table: ATALAIA_RETENTION_TABLE_DAYS) now.
    The scheduler runs the same job on ATALAIA_RETENTION_CRON."""
    from atalaia.privacy import apply_retention, retention_plan
    from atalaia.storage.db import get_engine
    from composition.cli.main import _settings

    settings = _settings()
    if dry_run:
        typer.echo(json.dumps(retention_plan(settings)))
        return
    typer.echo(json.dumps(apply_retention(get_engine(settings.database_url), settings)))
