"""Data-subject export and erasure, and retention, on SQLite and PostgreSQL.

The erasure test stores one subject's events among others' (events, metrics, embeddings,
feedback, a spooled event, a spooled dead-letter record of one of their events, a retraining
data set), erases the subject, then reads every table and every spool file and finds nothing of
theirs left, while everyone else's data is untouched.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, insert, select

from atalaia.deadletter import dead_letter_for
from atalaia.events import ChatMessage, FeedbackEvent, InferenceEvent
from atalaia.metrics.operational import metric_events, operational_values
from atalaia.privacy import apply_retention, erase_subject, export_subject
from atalaia.settings import Settings
from atalaia.storage import repository
from atalaia.storage import tables as t
from atalaia.storage.db import upgrade
from atalaia.subjects import subject_id, subject_pepper
from producers.spool import Spool, SpooledMessage

pytestmark = pytest.mark.integration

USER = "ana.silva@example.com"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'a.db'}"
        upgrade(url)
        return url
    return str(request.getfixturevalue("fresh_pg"))


def _event(sid: str | None, text: str, ts: datetime | None = None) -> InferenceEvent:
    return InferenceEvent(
        service="svc",
        model_version="m@1",
        messages=[ChatMessage(role="user", content=text)],
        response=f"answer to {text}",
        latency_ms=5.0,
        prompt_tokens=3,
        completion_tokens=4,
        cost=0.01,
        subject_id=sid,
        **({"ts": ts} if ts else {}),
    )


def _store(engine, events: list[InferenceEvent], feedback: list[FeedbackEvent]) -> None:  # type: ignore[no-untyped-def]
    with engine.begin() as conn:
        metrics = [m for ev in events for m in metric_events(ev, dict(operational_values(ev)))]
        repository.store_inference_batch(conn, events, metrics)
        repository.store_feedback_batch(conn, feedback)
        conn.execute(
            insert(t.embeddings),
            [
                {
                    "event_id": str(ev.event_id),
                    "kind": kind,
                    "model_version": ev.model_version,
                    "ts": ev.ts,
                    "dim": 2,
                    "vector": b"\x00" * 8,
                }
                for ev in events
                for kind in ("prompt", "response")
            ],
        )


def _dump_everything(engine, settings: Settings) -> str:  # type: ignore[no-untyped-def]
    """Every row of every table (but the audit) and every spool line, decoded, as one text."""
    parts = []
    with engine.connect() as conn:
        for name, table in t.metadata.tables.items():
            if name == "privacy_requests":
                continue
            parts += [json.dumps(dict(r._mapping), default=str) for r in conn.execute(select(table))]
    for path in sorted(settings.spool_dir.glob("*")):  # type: ignore[union-attr]
        parts.append(path.read_text(encoding="utf-8"))
        parts += [m.value.decode() for m in Spool(path).read()]
    return "\n".join(parts)


def test_export_then_erase_leaves_nothing_of_the_subject(db_url: str, tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", database_url=db_url, subject_pepper="pepper")
    engine = create_engine(db_url)
    sid = subject_id(USER, subject_pepper(settings))
    other = subject_id("bob@example.com", subject_pepper(settings))
    mine = [_event(sid, f"pergunta {i} de {USER}") for i in range(3)]
    theirs = [_event(other, f"question {i}") for i in range(4)] + [_event(None, "anonymous")]
    # Feedback on the subject's answers, with and without their subject id; and someone else's.
    fb_mine = [
        FeedbackEvent(inference_event_id=mine[0].event_id, rating=-1, corrected_answer="30 dias", subject_id=sid),
        FeedbackEvent(inference_event_id=mine[1].event_id, rating=1),
    ]
    fb_theirs = [FeedbackEvent(inference_event_id=theirs[0].event_id, rating=1, subject_id=other)]
    _store(engine, mine + theirs, fb_mine + fb_theirs)
    with engine.begin() as conn:
        conn.execute(
            insert(t.model_versions),
            [
                {
                    "version": "m@2",
                    "status": "active",
                    "dataset_hash": "abc123",
                    "metrics": {},
                    "created_at": mine[0].ts,
                },
                {
                    "version": "m@3",
                    "status": "candidate",
                    "dataset_hash": "def456",
                    "metrics": {},
                    "created_at": mine[0].ts,
                },
            ],
        )
    # A retraining data set holding the subject's correction, and one that does not.
    for name, ids in (("abc123", [f"fb-{fb_mine[0].event_id}", "qa-1"]), ("def456", ["qa-1"])):
        folder = settings.home / "datasets" / name
        folder.mkdir(parents=True)
        (folder / "train.jsonl").write_text("".join(json.dumps({"id": i, "question": "q"}) + "\n" for i in ids))
    # Spooled while Kafka was away: one of their events, a dead-letter record of another, and bob's.
    assert settings.spool_dir is not None
    spool = Spool(settings.spool_dir / "inference-1.jsonl")
    late = _event(sid, f"spooled question of {USER}")
    dead = dead_letter_for(mine[2].to_json(), "test", "atalaia.inference", 0, 1)
    spool.append_many(
        [
            SpooledMessage("atalaia.inference", late.key, late.to_json()),
            SpooledMessage("atalaia.deadletter", None, dead.to_json()),
            SpooledMessage("atalaia.inference", theirs[1].key, theirs[1].to_json()),
        ]
    )

    exported = export_subject(engine, settings, sid, requested_by="dpo@example.com")
    assert {e["event_id"] for e in exported["inference_events"]} == {str(e.event_id) for e in mine}
    assert {f["event_id"] for f in exported["feedback"]} == {str(f.event_id) for f in fb_mine}
    assert len(exported["metrics"]) == sum(len(operational_values(e)) for e in mine)
    assert len(exported["embeddings"]) == 6 and len(exported["spool"]) == 2
    assert exported["datasets"] == ["abc123"] and exported["model_versions"] == ["m@2"]
    json.dumps(exported)  # JSON-ready

    report = erase_subject(engine, settings, sid, requested_by="dpo@example.com")
    assert report.deleted["inference_events"] == 3 and report.deleted["feedback"] == 2
    assert report.deleted["embeddings"] == 6 and report.spool == 2
    assert report.datasets == ["abc123"] and report.model_versions == ["m@2"]
    assert report.cache.startswith("skipped")  # no admin token in this test

    left = _dump_everything(engine, settings)
    needles = [sid, USER, *(str(e.event_id) for e in [*mine, late]), *(str(f.event_id) for f in fb_mine)]
    assert [n for n in needles if n in left] == []
    # Everyone else's data is all there.
    for ev in theirs:
        assert str(ev.event_id) in left
    assert str(fb_theirs[0].event_id) in left and theirs[1].to_json().decode() in left
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(t.inference_events)).scalar() == len(theirs)
        audit = conn.execute(select(t.privacy_requests).order_by(t.privacy_requests.c.id)).all()
    assert [(a.action, a.subject_id, a.requested_by) for a in audit] == [
        ("export", sid, "dpo@example.com"),
        ("erase", sid, "dpo@example.com"),
    ]
    assert audit[1].details["deleted"]["inference_events"] == 3
    # Nothing left to erase: a second request deletes nothing and is audited too.
    assert erase_subject(engine, settings, sid).deleted["inference_events"] == 0


def test_retention_deletes_old_rows_per_table(db_url: str, tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path / "home", database_url=db_url, retention_days=30, retention_table_days={"metrics": 7}
    )
    engine = create_engine(db_url)
    now = datetime.now(UTC)
    old, middle, new = (_event(None, w, now - timedelta(days=d)) for w, d in (("old", 40), ("mid", 10), ("new", 1)))
    _store(engine, [old, middle, new], [])
    deleted = apply_retention(engine, settings, now=now)
    per_event = len(operational_values(old))
    assert deleted == {"inference_events": 1, "metrics": 2 * per_event, "embeddings": 2, "feedback": 0}
    with engine.connect() as conn:
        ids = set(conn.execute(select(t.inference_events.c.event_id)).scalars())
        assert ids == {str(middle.event_id), str(new.event_id)}
        assert set(conn.execute(select(t.metrics.c.event_id)).scalars()) == {str(new.event_id)}
        (audit,) = conn.execute(select(t.privacy_requests)).all()
    assert audit.action == "retention" and audit.details["deleted"]["metrics"] == 2 * per_event
    assert apply_retention(engine, settings, now=now)["inference_events"] == 0
    assert uuid.UUID(str(new.event_id))
