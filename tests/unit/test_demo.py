"""The demo's pure parts: the drift holdout, when users pause, the loop facts, per-service env."""

from __future__ import annotations

import json
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import Engine, create_engine

from atalaia.settings import Settings
from atalaia.storage.tables import metadata, metrics
from composition.cli.demo import BUSY_STEPS, loop_facts, run_is_busy, write_demo_holdout
from composition.cli.demo_scenario import DRIFT_TOPICS
from composition.cli.supervisor import Supervisor
from retrain.runner import eval_cache_key

T0 = datetime(2026, 11, 29, 8, 0, tzinfo=UTC)


def test_demo_holdout_keeps_only_drift_topics(tmp_path: Path) -> None:
    source = Settings().qa_holdout_file
    assert source is not None
    n = write_demo_holdout(source, tmp_path / "demo" / "holdout.jsonl")
    items = [json.loads(line) for line in (tmp_path / "demo" / "holdout.jsonl").read_text().splitlines()]
    assert n == len(items) >= 20
    assert {i["topic"] for i in items} <= set(DRIFT_TOPICS)


def test_users_pause_only_in_busy_steps() -> None:
    for step in BUSY_STEPS:
        assert run_is_busy({"status": "running", "steps": [{"name": step, "status": "running"}]})
    assert run_is_busy({"status": "running", "steps": []})  # the run checks before its first step
    later = [{"name": s, "status": "done"} for s in BUSY_STEPS] + [{"name": "deploy", "status": "running"}]
    assert not run_is_busy({"status": "running", "steps": later})
    assert not run_is_busy({"status": "skipped", "steps": []})
    assert not run_is_busy(None)


def _engine_with_rouge(tmp_path: Path, values: list[tuple[datetime, float, str]]) -> Engine:
    engine = create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    metadata.create_all(engine)
    with engine.begin() as conn:
        for ts, value, version in values:
            conn.execute(
                metrics.insert(),
                {
                    "event_id": str(uuid.uuid4()),
                    "name": "rougeL",
                    "value": value,
                    "service": "s",
                    "model_version": version,
                    "ts": ts,
                    "created_at": ts,
                },
            )
    return engine


def _summary(fired: int, resolved: int, active: str) -> dict[str, object]:
    return {"alerts": {"fired": fired, "resolved": resolved, "open": fired - resolved}, "active_version": active}


def test_loop_facts_compare_the_phases_from_the_database(tmp_path: Path) -> None:
    phases = [("normal", T0), ("drift", T0 + timedelta(minutes=1)), ("recovered", T0 + timedelta(minutes=5))]
    phases.append(("settling", T0 + timedelta(minutes=6)))
    engine = _engine_with_rouge(
        tmp_path,
        [
            (T0 + timedelta(seconds=10), 0.9, "m@base"),  # normal: not compared
            (T0 + timedelta(minutes=2), 0.2, "m@base"),
            (T0 + timedelta(minutes=3), 0.1, "m@base"),
            (T0 + timedelta(minutes=5, seconds=30), 0.4, "m@ft"),
        ],
    )
    facts = loop_facts(engine, _summary(3, 2, "m@ft"), phases, "m@base")
    assert all(ok for ok, _ in facts.values()), facts
    assert "drift 0.15 (n=2)" in facts["recovered"][1] and "recovered 0.4 (n=1)" in facts["recovered"][1]

    facts = loop_facts(engine, _summary(2, 0, "m@base"), phases, "m@base")
    assert not facts["alert"][0] and not facts["new_version"][0]


def test_loop_facts_without_recovery(tmp_path: Path) -> None:
    engine = _engine_with_rouge(tmp_path, [])
    phases = [("normal", T0), ("drift", T0 + timedelta(minutes=1)), ("no new version", T0 + timedelta(minutes=9))]
    ok, what = loop_facts(engine, _summary(1, 1, "m@base"), phases, "m@base")["recovered"]
    assert not ok and "no recovered phase" in what


def test_supervisor_gives_each_service_its_own_env(tmp_path: Path) -> None:
    sup = Supervisor(["a", "b"], tmp_path / "logs", env={"ATALAIA_X": "all"}, service_env={"b": {"ATALAIA_X": "b"}})
    script = "import os, sys; open(sys.argv[1], 'w').write(os.environ['ATALAIA_X'])"
    for child in sup.children:
        child.argv = [sys.executable, "-c", script, str(tmp_path / child.name)]
    sup.start()
    for child in sup.children:
        assert child.proc is not None
        child.proc.wait(30)
    sup.stop()
    assert (tmp_path / "a").read_text() == "all" and (tmp_path / "b").read_text() == "b"


def test_eval_cache_key_changes_with_the_holdout_and_token_budget(tmp_path: Path) -> None:
    holdout = tmp_path / "holdout.jsonl"
    holdout.write_text('{"id": "h1", "question": "q?", "answer": "a."}\n')
    key = eval_cache_key(Settings(qa_holdout_file=holdout, retrain_eval_limit=8))
    assert key.startswith("holdout:8:rag:")
    assert eval_cache_key(Settings(qa_holdout_file=holdout, retrain_eval_limit=8, eval_max_tokens=32)) != key
    holdout.write_text('{"id": "h2", "question": "q2?", "answer": "a2."}\n')
    assert eval_cache_key(Settings(qa_holdout_file=holdout, retrain_eval_limit=8)) != key
