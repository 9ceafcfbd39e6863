"""The demo's pure parts: the drift holdout, when users pause, the loop facts, per-service env."""

from __future__ import annotations

import json
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import Engine, create_engine

from atalaia.settings import Settings
from atalaia.storage.tables import alerts, inference_events, metadata, metrics
from composition.cli.demo import BUSY_STEPS, loop_facts, run_is_busy, users_heldout, write_demo_holdout
from composition.cli.demo_scenario import (
    DRIFT_TOPICS,
    load_off_topic,
    load_qa,
    phase_mixes,
    plan_question,
    recovered_questions,
)
from composition.cli.supervisor import Supervisor
from retrain.runner import eval_cache_key

T0 = datetime(2026, 11, 29, 8, 0, tzinfo=UTC)


def test_demo_holdout_is_the_gates_half_of_the_drift_topics(tmp_path: Path) -> None:
    source = Settings().qa_holdout_file
    assert source is not None
    n = write_demo_holdout(source, tmp_path / "demo" / "holdout.jsonl")
    items = [json.loads(line) for line in (tmp_path / "demo" / "holdout.jsonl").read_text().splitlines()]
    assert n == len(items) >= 16  # the full demo's gate scores 16
    assert {i["topic"] for i in items} <= set(DRIFT_TOPICS)
    # The users ask the other half: never the gate's questions, never a training question.
    users = {q for q, _ in users_heldout(source)}
    assert len(users) >= 16 and not users & {i["question"] for i in items}
    assert not users & {q["question"] for q in load_qa()}


def test_users_pause_only_in_busy_steps() -> None:
    for step in BUSY_STEPS:
        assert run_is_busy({"status": "running", "steps": [{"name": step, "status": "running"}]})
    assert run_is_busy({"status": "running", "steps": []})  # the run checks before its first step
    later = [{"name": s, "status": "done"} for s in BUSY_STEPS] + [{"name": "deploy", "status": "running"}]
    assert not run_is_busy({"status": "running", "steps": later})
    assert not run_is_busy({"status": "skipped", "steps": []})
    assert not run_is_busy(None)


def _engine_with_rouge(
    tmp_path: Path,
    values: list[tuple[datetime, float, str, str, str]],
    resolved: tuple[tuple[datetime, float | None], ...] = (),
) -> Engine:
    """Requests (time, ROUGE-L, version, demo group, question) and alerts resolved at (time, value)."""
    engine = create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    metadata.create_all(engine)
    with engine.begin() as conn:
        for ts, value, version, group, item in values:
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
                    "metadata": {"demo_group": group, "demo_item": item} if group else {},
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
        for ts, value in resolved:
            conn.execute(
                alerts.insert(),
                {
                    "event_id": str(uuid.uuid4()),
                    "alert_id": str(uuid.uuid4()),
                    "fingerprint": uuid.uuid4().hex,
                    "rule": "embedding_drift",
                    "state": "resolved",
                    "severity": "warning",
                    "labels": {"model_version": "m@base"},
                    "annotations": {},
                    "value": value,
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


def test_loop_facts_pair_held_out_questions_and_report_corrected_apart(tmp_path: Path) -> None:
    engine = _engine_with_rouge(
        tmp_path,
        [
            (T0 + timedelta(seconds=10), 0.9, "m@base", "", ""),  # normal: not compared
            (T0 + timedelta(minutes=2), 0.2, "m@base", "heldout", "a"),
            (T0 + timedelta(minutes=3), 0.1, "m@base", "heldout", "b"),
            (T0 + timedelta(minutes=3, seconds=5), 0.1, "m@base", "trained", "t"),
            (T0 + timedelta(minutes=4), 0.3, "m@base", "heldout", "c"),  # never asked again: unpaired
            (T0 + timedelta(minutes=5, seconds=30), 0.3, "m@ft", "heldout", "a"),
            (T0 + timedelta(minutes=5, seconds=40), 0.1, "m@ft", "heldout", "b"),
            # Memorised corrections score high but decide nothing.
            (T0 + timedelta(minutes=6), 0.95, "m@ft", "corrected", "t"),
        ],
        resolved=((T0 + timedelta(minutes=6, seconds=30), None), (T0 + timedelta(minutes=7), 0.05)),
    )
    facts = loop_facts(engine, _summary(3, 2, "m@ft"), PHASES, "m@base")
    assert all(ok for ok, _ in facts.values()), facts
    what = facts["recovered"][1]
    assert "on 2 questions asked in both phases: drift 0.150 → recovered 0.200 (+0.050; better on 1" in what
    assert "corrected questions recovered 0.950 (n=1)" in what and "trained questions during drift 0.100" in what
    assert "2 resolved under recovered traffic (1 on a recovered value, 1 as their version stopped" in facts["alert"][1]

    facts = loop_facts(engine, _summary(2, 0, "m@base"), PHASES, "m@base")
    assert not facts["new_version"][0]


def test_recovery_on_corrected_questions_alone_does_not_count(tmp_path: Path) -> None:
    engine = _engine_with_rouge(
        tmp_path,
        [
            (T0 + timedelta(minutes=2), 0.2, "m@base", "heldout", "a"),
            (T0 + timedelta(minutes=5, seconds=30), 0.15, "m@ft", "heldout", "a"),
            (T0 + timedelta(minutes=6), 0.95, "m@ft", "corrected", "t"),
        ],
        # Resolved while users paused for training: not under recovered traffic.
        resolved=((T0 + timedelta(minutes=4), 0.1),),
    )
    facts = loop_facts(engine, _summary(1, 1, "m@ft"), PHASES, "m@base")
    assert not facts["recovered"][0] and "-0.050" in facts["recovered"][1]
    assert not facts["alert"][0] and "0 resolved under recovered traffic" in facts["alert"][1]
    assert "1 before it" in facts["alert"][1]


def test_scenario_pairs_held_out_questions_across_phases_with_the_same_budget() -> None:
    import random

    source = Settings().qa_holdout_file
    assert source is not None
    heldout = users_heldout(source)
    mixes = phase_mixes(load_qa(), load_off_topic(), heldout)
    rng = random.Random(3)
    drift = [plan_question(mixes["drift"], rng, 24, 96) for _ in range(120)]
    asked = [(q.text, q.reference or "") for q in drift if q.group == "heldout"]
    # Held-out questions come in a fixed order, never corrected, always with the short budget.
    assert [q for q, _ in asked[: len(heldout)]] == [q for q, _ in heldout[: len(asked)]]
    assert all(not q.feedback and q.max_tokens == 24 for q in drift if q.group == "heldout")
    assert all(q.group == "trained" for q in drift if q.feedback)
    assert any(q.max_tokens == 96 for q in drift)  # the long-answer injection stays on other traffic
    corrected = [(q.text, q.reference or "") for q in drift if q.feedback][:5]
    recovered = recovered_questions(corrected, asked[:9], 24)
    # Recovered: each held-out question asked during the drift once more, same budget, no feedback.
    assert [q.text for q in recovered if q.group == "heldout"] == [q for q, _ in asked[:9]]
    assert [q.group for q in recovered].count("corrected") == 3
    assert {q.text for q in recovered if q.group == "corrected"} <= {t for t, _ in corrected}
    assert all(q.max_tokens == 24 and not q.feedback and q.kind == "regulation" for q in recovered)


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
