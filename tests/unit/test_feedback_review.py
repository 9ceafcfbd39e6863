"""Review of corrections before training (retrain/review.py, `atalaia feedback review`) on SQLite."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine
from typer.testing import CliRunner

from atalaia.settings import Settings
from atalaia.storage.db import upgrade
from retrain import review
from retrain.dataset import build_dataset, count_new_feedback, feedback_pairs
from tests.unit.test_feedback_filter import T0, add_feedback


@pytest.fixture
def db(tmp_path: Path) -> tuple[str, Engine]:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    upgrade(url)
    return url, create_engine(url)


def _three(engine: Engine) -> list[str]:
    answers = [
        "Annual leave is 30 days a year, booked in the HR portal.",
        "Expense reports are due within 30 days of the trip.",
        "Your manager approves business travel before you book.",
    ]
    return [
        add_feedback(engine, f"Question {i}?", a, T0 + timedelta(minutes=i), "portal", f"u{i}")
        for i, a in enumerate(answers)
    ]


def test_only_approved_corrections_train_with_review_on(db: tuple[str, Engine], tmp_path: Path) -> None:
    _, engine = db
    a, b, c = _three(engine)
    assert [p.id for p in review.pending(engine)] == [a, b, c]
    assert review.counts(engine) == {"pending": 3, "approved": 0, "rejected": 0}

    # Review off: pending corrections train as before; a rejected one never does.
    review.decide(engine, [c[:8]], "rejected", reviewed_by="ana", reason="wrong fact")
    assert {p["id"] for p in feedback_pairs(engine)} == {f"fb-{a}", f"fb-{b}"}

    # Review on: nothing is approved yet, so nothing from feedback trains.
    on = Settings(home=tmp_path / "h", feedback_review=True)
    assert feedback_pairs(engine, approved_only=True) == []
    assert count_new_feedback(engine, None, approved_only=True) == 0
    with pytest.raises(ValueError, match="no training data"):
        build_dataset(engine, on, tmp_path / "d0", include_qa=False, include_regulations=False)

    review.decide(engine, [f"fb-{a}"], "approved", reviewed_by="ana")
    assert [p.id for p in review.pending(engine)] == [b]
    assert review.counts(engine) == {"pending": 1, "approved": 1, "rejected": 1}
    ds = build_dataset(engine, on, tmp_path / "d1", include_qa=False, include_regulations=False)
    assert {r["id"] for r in ds.records("train") + ds.records("val")} == {f"fb-{a}"}
    # New data for the scheduler is counted by time of approval, not of the feedback.
    assert count_new_feedback(engine, T0 + timedelta(days=365), approved_only=True) == 0
    assert count_new_feedback(engine, T0 - timedelta(days=1), approved_only=True) == 1

    # A later decision replaces the earlier one.
    review.decide(engine, [c], "approved", reviewed_by="bob")
    assert {p["id"] for p in feedback_pairs(engine, approved_only=True)} == {f"fb-{a}", f"fb-{c}"}


def test_ids_must_be_known_unique_and_long_enough(db: tuple[str, Engine]) -> None:
    _, engine = db
    a, _, _ = _three(engine)
    with pytest.raises(ValueError, match="at least 8"):
        review.decide(engine, ["abc"], "approved", reviewed_by="x")
    with pytest.raises(ValueError, match="no correction"):
        review.decide(engine, [a, "ffffffff-0000"], "approved", reviewed_by="x")
    assert review.counts(engine)["approved"] == 0  # all or none
    with pytest.raises(ValueError, match="state"):
        review.decide(engine, [a], "maybe", reviewed_by="x")


def test_cli_lists_approves_and_rejects(db: tuple[str, Engine], tmp_path: Path) -> None:
    from composition.cli.main import app

    url, engine = db
    a, b, c = _three(engine)
    toxic = add_feedback(engine, "Who?", "You are a stupid idiot, shut up.", T0 + timedelta(hours=1), "bot", "u9")
    env = {"ATALAIA_DATABASE_URL": url, "ATALAIA_HOME": str(tmp_path / "home"), "ATALAIA_FEEDBACK_REVIEW": "true"}
    runner = CliRunner()
    listed = runner.invoke(app, ["feedback", "review", "list", "--json"], env=env)
    assert listed.exit_code == 0, listed.output
    import json

    rows = [json.loads(line) for line in listed.stdout.splitlines() if line.startswith("{")]
    assert [r["id"] for r in rows] == [a, b, c, toxic]
    assert rows[0]["question"] == "Question 0?" and rows[0]["filter"] == "ok"
    assert rows[3]["filter"].startswith("toxic")

    done = runner.invoke(app, ["feedback", "review", "approve", a, b[:10], "--by", "ana"], env=env)
    assert done.exit_code == 0, done.output
    assert f"approved {a}" in done.stdout and f"approved {b}" in done.stdout
    done = runner.invoke(app, ["feedback", "review", "reject", toxic, "--reason", "insult"], env=env)
    assert done.exit_code == 0, done.output
    bad = runner.invoke(app, ["feedback", "review", "approve", "nope"], env=env)
    assert bad.exit_code == 2 and "8 characters" in bad.output
    table = runner.invoke(app, ["feedback", "review", "list"], env=env)
    assert table.exit_code == 0 and c in table.stdout and a not in table.stdout
    assert review.counts(engine) == {"pending": 1, "approved": 2, "rejected": 1}
