"""The demo's pure parts: the drift holdout, when users pause, the loop facts, per-service env."""

from __future__ import annotations

import json
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine

from atalaia.settings import Settings
from atalaia.storage.tables import alerts, inference_events, metadata, metrics
from composition.cli.demo import BUSY_STEPS, group_rouge, loop_facts, run_is_busy, write_demo_holdout
from composition.cli.demo_scenario import DRIFT_TOPICS, plan_question
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


def _engine_with_rouge(
    tmp_path: Path, values: list[tuple[datetime, float, str, str]], resolved: tuple[datetime, ...] = ()
) -> Engine:
    """Requests with a ``demo_group`` and their ROUGE-L; alerts resolved at ``resolved``."""
    engine = create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    metadata.create_all(engine)
    with engine.begin() as conn:
        for ts, value, version, group in values:
            event_id = str(uuid.uuid4())
            conn.execute(
                inference_events.insert(),
                {
                    "event_id": event_id,
                    "ts": ts,
                    "service": "s",
                    "model_version": version,
                    "messages": [],
                    "response": "r",
                    "context": [],
                    "latency_ms": 1.0,
                    "prompt_tokens": 1,
                    "completion_tokens": 1,
                    "cost": 0.0,
                    "cache_hit": False,
                    "metadata": {"demo_group": group} if group else {},
                    "ingested_at": ts,
                },
            )
            conn.execute(
                metrics.insert(),
                {
                    "event_id": event_id,
                    "name": "rougeL",
                    "value": value,
                    "service": "s",
                    "model_version": version,
                    "ts": ts,
                    "created_at": ts,
                },
            )
        for ts in resolved:
            aid = str(uuid.uuid4())
            conn.execute(
                alerts.insert(),
                {
                    "event_id": str(uuid.uuid4()),
                    "alert_id": aid,
                    "fingerprint": "f",
                    "rule": "embedding_drift",
                    "state": "resolved",
                    "severity": "warning",
                    "labels": {},
                    "annotations": {},
                    "started_at": ts - timedelta(minutes=2),
                    "ts": ts,
                },
            )
    return engine


def _summary(fired: int, resolved: int, active: str) -> dict[str, object]:
    return {"alerts": {"fired": fired, "resolved": resolved, "open": fired - resolved}, "active_version": active}


PHASES = [
    ("normal", T0),
    ("drift", T0 + timedelta(minutes=1)),
    ("recovered", T0 + timedelta(minutes=5)),
    ("settling", T0 + timedelta(minutes=8)),
]


def test_loop_facts_compare_held_out_questions_and_report_corrected_apart(tmp_path: Path) -> None:
    engine = _engine_with_rouge(
        tmp_path,
        [
            (T0 + timedelta(seconds=10), 0.9, "m@base", ""),  # normal: not compared
            (T0 + timedelta(minutes=2), 0.2, "m@base", "heldout"),
            (T0 + timedelta(minutes=3), 0.1, "m@base", "heldout"),
            (T0 + timedelta(minutes=3, seconds=5), 0.1, "m@base", "trained"),
            (T0 + timedelta(minutes=5, seconds=30), 0.3, "m@ft", "heldout"),
            # Memorised corrections score high but decide nothing.
            (T0 + timedelta(minutes=6), 0.95, "m@ft", "corrected"),
        ],
        resolved=(T0 + timedelta(minutes=6, seconds=30),),
    )
    assert group_rouge(engine, T0 + timedelta(minutes=1), T0 + timedelta(minutes=5)) == {
        "heldout": (pytest.approx(0.15), 2),
        "trained": (pytest.approx(0.1), 1),
    }
    facts = loop_facts(engine, _summary(3, 1, "m@ft"), PHASES, "m@base")
    assert all(ok for ok, _ in facts.values()), facts
    what = facts["recovered"][1]
    assert "drift 0.150 (n=2) → recovered 0.300 (n=1)" in what and "corrected questions recovered 0.950 (n=1)" in what
    assert "1 resolved under recovered traffic, 0 before it" in facts["alert"][1]

    facts = loop_facts(engine, _summary(2, 0, "m@base"), PHASES, "m@base")
    assert not facts["new_version"][0]


def test_recovery_on_corrected_questions_alone_does_not_count(tmp_path: Path) -> None:
    engine = _engine_with_rouge(
        tmp_path,
        [
            (T0 + timedelta(minutes=2), 0.2, "m@base", "heldout"),
            (T0 + timedelta(minutes=5, seconds=30), 0.15, "m@ft", "heldout"),
            (T0 + timedelta(minutes=6), 0.95, "m@ft", "corrected"),
        ],
        # Resolved while users paused for training: not under recovered traffic.
        resolved=(T0 + timedelta(minutes=4),),
    )
    facts = loop_facts(engine, _summary(1, 1, "m@ft"), PHASES, "m@base")
    assert not facts["recovered"][0]
    assert not facts["alert"][0] and "0 resolved under recovered traffic, 1 before it" in facts["alert"][1]


def test_loop_facts_without_recovery(tmp_path: Path) -> None:
    engine = _engine_with_rouge(tmp_path, [])
    phases = [("normal", T0), ("drift", T0 + timedelta(minutes=1)), ("no new version", T0 + timedelta(minutes=9))]
    ok, what = loop_facts(engine, _summary(1, 1, "m@base"), phases, "m@base")["recovered"]
    assert not ok and "no recovered phase" in what


def test_scenario_asks_held_out_questions_in_both_phases_with_the_same_lengths() -> None:
    import random

    from composition.cli.demo_scenario import load_heldout, load_off_topic, load_qa, phase_mixes, recovered_mix

    heldout = load_heldout()
    trained = {q["question"] for q in load_qa()}
    assert heldout and not {q for q, _ in heldout} & trained  # no training data contains them
    mixes = phase_mixes(load_qa(), load_off_topic(), heldout)
    rng = random.Random(3)
    drift = [plan_question(mixes["drift"], rng, 32, 128) for _ in range(600)]
    corrected = [(q.text, q.reference) for q in drift if q.feedback][:10]
    recovered = [plan_question(recovered_mix(corrected, heldout), rng, 32, 128) for _ in range(600)]
    # Held-out questions are asked in both phases and never corrected.
    assert sum(q.group == "heldout" for q in drift) > 100
    assert not any(q.feedback for q in drift if q.group == "heldout")
    assert all(q.group == "trained" for q in drift if q.feedback)
    # Recovered: mostly held-out, the rest corrected ones; nothing toxic or off-topic; no feedback.
    groups = {g: sum(q.group == g for q in recovered) for g in ("heldout", "corrected")}
    assert groups["heldout"] > 2 * groups["corrected"] > 0 and groups["heldout"] + groups["corrected"] == 600
    assert {q.text for q in recovered if q.group == "corrected"} <= {t for t, _ in corrected}
    assert not any(q.feedback for q in recovered)

    # The same answer-length settings in both phases.
    def long_share(qs: list) -> float:
        return sum(q.max_tokens == 128 for q in qs) / len(qs)

    assert abs(long_share(drift) - long_share(recovered)) < 0.07


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
