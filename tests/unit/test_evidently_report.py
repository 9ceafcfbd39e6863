"""Evidently reports over stored data (composition/report/evidently.py), the CLI, the scheduler's
job and the dashboard's list: a reference hour of short Portuguese answers against an hour of long,
more toxic, slower ones, on SQLite (the browser test opens the HTML on PostgreSQL's data)."""

from __future__ import annotations

import json
import re
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, create_engine
from typer.testing import CliRunner

from atalaia.events import utcnow
from atalaia.settings import Settings
from atalaia.storage import tables as t
from atalaia.storage.db import upgrade
from atalaia.storage.repository import insert_ignoring_duplicates
from composition.report import evidently as ev

VERSION = "regulations@base"
SHORT = "São 25 dias úteis de férias por ano."
LONG = (
    "Desculpe, não posso responder com certeza. Consulte o regulamento interno. "
    "Há muitas regras; cada caso é diferente, e o departamento pessoal decide. "
) * 3


def seed_periods(engine: Engine, now: datetime | None = None, n: int = 60) -> datetime:
    """``n`` requests in the hour before the returned split time (reference) and ``n`` after (drifted)."""
    now = now or utcnow()
    split = now - timedelta(hours=1)
    events, metrics = [], []
    for period, base in (("reference", split - timedelta(hours=1)), ("current", split)):
        for i in range(n):
            ts = base + timedelta(seconds=30 + i * 55)
            event_id = str(uuid.uuid4())
            drifted = period == "current"
            response = LONG if drifted and i % 3 else SHORT
            events.append(
                {
                    "event_id": event_id,
                    "ts": ts,
                    "service": "regulations-assistant",
                    "model_version": VERSION,
                    "messages": [
                        {"role": "system", "content": "Responda em português."},
                        {"role": "user", "content": f"Quantos dias de férias tenho no ano {2000 + i}?"},
                    ],
                    "response": response,
                    "context": [],
                    "latency_ms": 0.0,
                    "prompt_tokens": 40,
                    "completion_tokens": 12,
                    "cost": 0.0,
                    "cache_hit": False,
                    "reference": None,
                    "request_id": None,
                    "metadata": {},
                    "ingested_at": ts,
                }
            )
            values = {
                "latency_ms": (2600.0 if drifted else 800.0) + 13 * (i % 7),
                "toxicity_response": (0.2 if drifted else 0.02) + (i % 5) / 100,
                "response_tokens": float(len(response.split())),
            }
            for name, value in values.items():
                metrics.append(_metric(event_id, ts, name, value))
            if i % 10 == 0:  # a drift test: not one value per request, left out of the columns
                metrics.append(_metric(event_id, ts, "embedding_drift", 0.01))
    with engine.begin() as conn:
        insert_ignoring_duplicates(conn, t.inference_events, events)
        insert_ignoring_duplicates(conn, t.metrics, metrics)
    return split


def _metric(event_id: str, ts: datetime, name: str, value: float) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "name": name,
        "value": value,
        "error": None,
        "labels": None,
        "service": "regulations-assistant",
        "model_version": VERSION,
        "ts": ts,
        "created_at": ts,
    }


@pytest.fixture
def seeded(tmp_path: Path) -> tuple[Engine, Settings, datetime]:
    url = f"sqlite:///{tmp_path / 'ev.db'}"
    upgrade(url)
    engine = create_engine(url)
    split = seed_periods(engine)
    yield engine, Settings(home=tmp_path, database_url=url), split
    engine.dispose()


def test_report_files_and_drift_verdicts(seeded: tuple[Engine, Settings, datetime]) -> None:
    engine, settings, split = seeded
    summary = ev.build_evidently_report(engine, settings, since=split)
    html, body = Path(summary["html"]), Path(summary["json"])
    assert html.parent == settings.home / "reports" / "evidently"
    assert summary["reference"]["requests"] == summary["current"]["requests"] == 60
    assert summary["metric_columns"] == ["latency_ms", "response_tokens", "toxicity_response"]
    # What changed drifted; the prompts did not change their shape.
    assert {"latency_ms", "toxicity_response", "response_length", "response_words"} <= set(summary["drifted"])
    assert "prompt_sentences" not in summary["drifted"]
    metrics = json.loads(body.read_text())["metrics"]
    assert any("TextLength" in json.dumps(m) or "response_length" in json.dumps(m) for m in metrics)
    page = html.read_text(encoding="utf-8")
    # Self-contained: no script, stylesheet or image loaded from elsewhere (the browser test
    # checks the requests themselves).
    assert "<script src=" not in page and "<link " not in page
    assert not re.search(r"""src\s*=\s*["']?(https?:)?//""", page)
    assert json.loads(html.with_name(html.stem + ".summary.json").read_text())["drifted"] == summary["drifted"]


def test_version_filter_and_too_little_data(seeded: tuple[Engine, Settings, datetime]) -> None:
    engine, settings, split = seeded
    with pytest.raises(ValueError, match="too few requests"):
        ev.build_evidently_report(engine, settings, since=split, version="other@v9")
    with pytest.raises(ValueError, match="before"):
        ev.periods(utcnow() + timedelta(hours=1))


def test_prune_keeps_the_newest(tmp_path: Path) -> None:
    for stamp in ("20260101T000000Z", "20260102T000000Z", "20260103T000000Z"):
        for suffix in (".html", ".json", ".summary.json"):
            (tmp_path / f"evidently-{stamp}{suffix}").write_text("{}")
    assert ev.prune(tmp_path, 2) == ["evidently-20260101T000000Z"]
    assert sorted(p.name for p in tmp_path.iterdir())[0] == "evidently-20260102T000000Z.html"
    assert len(list(tmp_path.iterdir())) == 6


def test_cli_and_dashboard_list(seeded: tuple[Engine, Settings, datetime], monkeypatch: pytest.MonkeyPatch) -> None:
    from composition.cli.main import app
    from monitors.web import create_app

    engine, settings, split = seeded
    monkeypatch.setenv("ATALAIA_HOME", str(settings.home))
    monkeypatch.setenv("ATALAIA_DATABASE_URL", settings.database_url)
    runner = CliRunner()
    result = runner.invoke(app, ["report", "evidently", "--since", split.isoformat(), "--version", VERSION])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert printed["version"] == VERSION and "latency_ms" in printed["drifted"]
    assert runner.invoke(app, ["report", "evidently", "--since", "yesterday"]).exit_code == 2
    assert runner.invoke(app, ["report", "evidently", "--version", "nope@v0"]).exit_code == 1

    client = TestClient(create_app(settings, engine))
    listed = client.get("/api/dashboard/reports").json()["evidently"]
    assert len(listed) == 1 and listed[0]["version"] == VERSION
    page = client.get(listed[0]["html"])
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert client.get(listed[0]["json"]).json()["metrics"]
    assert client.get("/reports/evidently/..%2F..%2Fev.db").status_code == 404
    assert client.get("/reports/evidently/evidently-20990101T000000Z.html").status_code == 404
    dashboard = client.get("/dashboard").text
    assert 'id="evidently-reports"' in dashboard and "/static/reports.js" in dashboard


def test_scheduler_job_runs_the_command(monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess

    from retrain import jobs

    calls: list[list[str]] = []

    class Done:
        returncode = 0

    def fake_run(cmd: list[str], **_kw: Any) -> Done:
        calls.append(cmd)
        return Done()

    monkeypatch.setattr(subprocess, "run", fake_run)
    assert jobs.evidently_report() == 0
    assert calls[0][1:] == ["-m", "composition.cli.main", "report", "evidently"]
