"""Saved reports on the dashboard: the Evidently reports in ``$ATALAIA_HOME/reports/evidently``.

``atalaia report evidently`` (by hand, or the scheduler's job on ``ATALAIA_EVIDENTLY_CRON``) writes
``evidently-<UTC timestamp>.html``, ``.json`` and ``.summary.json`` there. This router lists the
summaries (``GET /api/dashboard/reports``) and serves the files (``GET /reports/evidently/<file>``);
only names of that pattern inside that folder are served.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import FileResponse

#: Folder under ``$ATALAIA_HOME/reports`` (``composition.report.evidently.EVIDENTLY_DIR``).
EVIDENTLY_DIR = "evidently"
#: The files this router serves: a report's HTML, its JSON and its summary.
FILE_NAME = re.compile(r"^evidently-\d{8}T\d{6}Z(-\d+)?\.(html|json|summary\.json)$")
MEDIA = {".html": "text/html", ".json": "application/json"}

router = APIRouter(tags=["reports"])


def reports_folder(request: Request) -> Path:
    """``$ATALAIA_HOME/reports/evidently`` of the app's settings."""
    home: Path = request.app.state.settings.home
    return home / "reports" / EVIDENTLY_DIR


def list_reports(folder: Path, limit: int = 50) -> list[dict[str, Any]]:
    """The saved reports' summaries in ``folder``, newest first, each with links to its files.

    >>> list_reports(Path("/nonexistent"))
    []
    """
    if not folder.is_dir():
        return []
    out = []
    for path in sorted(folder.glob("evidently-*.summary.json"), reverse=True)[:limit]:
        try:
            summary = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # being replaced, or not ours
        stem = path.name.removesuffix(".summary.json")
        if not (folder / f"{stem}.html").exists():
            continue  # pruned under us
        out.append(
            {
                "name": stem,
                "generated_at": summary.get("generated_at"),
                "version": summary.get("version"),
                "reference": summary.get("reference"),
                "current": summary.get("current"),
                "drifted": summary.get("drifted", []),
                "columns": len(summary.get("columns", [])),
                "html": f"/reports/{EVIDENTLY_DIR}/{stem}.html",
                "json": f"/reports/{EVIDENTLY_DIR}/{stem}.json",
            }
        )
    return out


@router.get("/api/dashboard/reports")
def get_reports(
    request: Request, limit: int = Query(20, ge=1, le=200, description="Most reports listed.")
) -> dict[str, Any]:
    """The Evidently reports saved, newest first: periods, drifted columns, links to HTML and JSON."""
    return {"evidently": list_reports(reports_folder(request), limit)}


@router.get("/reports/evidently/{name}", include_in_schema=False)
def get_report_file(request: Request, name: str) -> FileResponse:
    """One saved report file (HTML opens offline: Evidently inlines its scripts)."""
    if not FILE_NAME.match(name):
        raise HTTPException(status_code=404, detail="no such report")
    path = reports_folder(request) / name
    if not path.is_file():
        raise HTTPException(status_code=404, detail="no such report")
    return FileResponse(path, media_type=MEDIA[path.suffix])
