"""Feedback review on PostgreSQL: migration 0006's table, `atalaia feedback review` and a data set
built with ATALAIA_FEEDBACK_REVIEW=true that holds only the approved corrections."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine
from typer.testing import CliRunner

from atalaia.settings import Settings
from retrain.dataset import build_dataset
from tests.unit.test_feedback_filter import T0, add_feedback

pytestmark = pytest.mark.integration


def test_review_queue_on_postgresql(fresh_pg: str, tmp_path: Path) -> None:
    from composition.cli.main import app

    engine = create_engine(fresh_pg)
    good = add_feedback(engine, "Can I carry leave over?", "Up to 10 days, until 31 March.", T0, "portal", "u1")
    late = add_feedback(
        engine, "Is parking free?", "Yes, for employees with a badge.", T0 + timedelta(minutes=1), "portal", "u2"
    )
    bad = add_feedback(
        engine, "Who approves travel?", "Nobody, book whatever you like.", T0 + timedelta(minutes=2), "bot", "u3"
    )
    env = {"ATALAIA_DATABASE_URL": fresh_pg, "ATALAIA_HOME": str(tmp_path / "home"), "ATALAIA_FEEDBACK_REVIEW": "true"}
    runner = CliRunner()
    listed = runner.invoke(app, ["feedback", "review", "list", "--json"], env=env)
    assert listed.exit_code == 0, listed.output
    assert [json.loads(x)["id"] for x in listed.stdout.splitlines() if x.startswith("{")] == [good, late, bad]
    assert runner.invoke(app, ["feedback", "review", "approve", good], env=env).exit_code == 0
    rejected = runner.invoke(app, ["feedback", "review", "reject", f"fb-{bad}", "--reason", "false"], env=env)
    assert rejected.exit_code == 0, rejected.output

    on = Settings(home=tmp_path / "h", database_url=fresh_pg, feedback_review=True)
    ds = build_dataset(engine, on, tmp_path / "d", include_qa=False, include_regulations=False)
    assert {r["id"] for r in ds.records("train") + ds.records("val")} == {f"fb-{good}"}
    manifest = json.loads((ds.path / "manifest.json").read_text())
    assert manifest["feedback_review"] is True and manifest["feedback_used"] == [f"fb-{good}"]

    off = Settings(home=tmp_path / "h2", database_url=fresh_pg)
    ds = build_dataset(engine, off, tmp_path / "d2", include_qa=False, include_regulations=False)
    assert {r["id"] for r in ds.records("train") + ds.records("val")} == {f"fb-{good}", f"fb-{late}"}
