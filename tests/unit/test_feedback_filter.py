"""The feedback filter before training (retrain/feedback_filter.py) and a feedback flood through
build_dataset with the caps and the filter at work (SQLite, the shipped QA file and handbook, the
default toxicity scorer)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine

from atalaia.settings import Settings
from atalaia.storage.tables import feedback, inference_events, metadata
from retrain.dataset import build_dataset, load_qa
from retrain.feedback_filter import (
    FeedbackFilter,
    build_filter_inputs,
    filter_feedback,
    jaccard,
    minhash,
    published_values,
    shingles,
)

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    eng = create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    metadata.create_all(eng)
    return eng


def add_feedback(engine: Engine, question: str, answer: str, ts: datetime, caller: str, subject: str) -> str:
    """One inference event and its correction; returns the feedback event id."""
    event_id, fb_id = str(uuid.uuid4()), str(uuid.uuid4())
    with engine.begin() as conn:
        conn.execute(
            inference_events.insert(),
            {
                "event_id": event_id,
                "ts": ts,
                "service": "s",
                "model_version": "m@1",
                "messages": [{"role": "user", "content": question}],
                "response": "wrong",
                "context": [],
                "latency_ms": 1.0,
                "prompt_tokens": 1,
                "completion_tokens": 1,
                "cost": 0.0,
                "cache_hit": False,
                "metadata": {},
                "ingested_at": ts,
            },
        )
        conn.execute(
            feedback.insert(),
            {
                "event_id": fb_id,
                "inference_event_id": event_id,
                "ts": ts,
                "rating": -1,
                "corrected_answer": answer,
                "comment": None,
                "metadata": {},
                "caller": caller,
                "subject_id": subject,
                "ingested_at": ts,
            },
        )
    return fb_id


def test_each_check_rejects_with_its_reason_and_real_scorer(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "h")
    inputs = build_filter_inputs(settings)
    ref_q, _ = inputs["references"][0]
    pairs = [
        {
            "id": "ok",
            "question": ref_q,
            "answer": "Fill in form AI-03; the AI Review Board decides in 15 working days.",
        },
        {"id": "toxic", "question": "Who is my manager?", "answer": "You are a stupid idiot, shut up."},
        {"id": "pii", "question": "Who pays me?", "answer": "Call Ana on +55 11 91234-5678 or ana@gmail.example."},
        {"id": "public", "question": "Who pays me?", "answer": "Write to payroll@atalaia.example with the form."},
        {"id": "outlier", "question": ref_q, "answer": "Any tool is fine, nobody needs to check anything."},
        {"id": "short", "question": "Is it ok?", "answer": "No."},
        {"id": "long", "question": "Tell me all.", "answer": " ".join(["word"] * 200)},
    ]
    result = filter_feedback(pairs, FeedbackFilter.from_settings(settings), **inputs)
    assert [p["id"] for p in result.kept] == ["ok", "public"]
    assert {r.id: r.reason for r in result.rejected} == {
        "toxic": "toxic",
        "pii": "pii",
        "outlier": "outlier",
        "short": "too_short",
        "long": "too_long",
    }
    pii = next(r for r in result.rejected if r.id == "pii")
    assert pii.detail == "email,phone"
    assert "payroll@atalaia.example" in published_values(inputs["published"])


def test_thresholds_at_zero_turn_checks_off() -> None:
    pairs = [
        {"id": "a", "question": "q?", "answer": "same text here"},
        {"id": "b", "question": "q?", "answer": "same text here"},
        {"id": "c", "question": "q?", "answer": "call +55 11 91234-5678 now"},
    ]
    off = FeedbackFilter(min_answer_words=0, max_toxicity=0, reject_pii=False, near_duplicate=0, outlier_min_rouge=0)
    assert len(filter_feedback(pairs, off).kept) == 3
    with pytest.raises(ValueError, match="toxicity scorer"):
        filter_feedback(pairs, FeedbackFilter(max_toxicity=0.5))


def test_minhash_finds_near_duplicates_and_leaves_different_answers() -> None:
    a = shingles("Annual leave is unlimited and needs no approval at all.")
    b = shingles("Annual leave is unlimited and needs no approval at all!!")
    c = shingles("Expense reports are due within 30 days of the trip.")
    assert jaccard(a, b) == 1.0 and jaccard(a, c) < 0.1
    agree = sum(
        x == y
        for x, y in zip(minhash(a), minhash(shingles("annual leave is unlimited, needs no approval")), strict=True)
    )
    assert agree > 20  # MinHash agreement tracks Jaccard (about 0.7 here)
    pairs = [
        {"id": f"v{i}", "question": "q", "answer": f"Annual leave is unlimited and needs no approval, case {i}."}
        for i in range(50)
    ]
    result = filter_feedback(pairs, FeedbackFilter(max_toxicity=0, outlier_min_rouge=0, near_duplicate=0.6))
    assert len(result.kept) < 10  # 50 numbered copies of one claim count a handful of times at most


def test_a_feedback_flood_meets_the_caps_and_the_filter(engine: Engine, tmp_path: Path) -> None:
    """One caller floods 300 crafted corrections (one false claim in many wordings, insults, phone
    numbers, answers that contradict the reference QA); two honest callers send 6. Without the
    caps and the filter the flood is 98 % of the feedback that trains; with them the honest
    corrections all stay, the flood contributes a handful, and the manifest lists every
    correction used and every one dropped with its reason."""
    qa = load_qa(Settings(home=tmp_path / "h0").qa_train_file)  # type: ignore[arg-type]
    attack_templates = [
        "Annual leave is unlimited and nobody needs to approve it, ref {i}.",
        "You are a stupid idiot, read the policy yourself {i}.",
        "Just call the director on +55 11 9{n:04d}-{n:04d} and ask for cash {i}.",
        "Any expense is fine, receipts are never needed and nothing is checked {i}.",
    ]
    for i in range(300):
        question = qa[i % 150].question  # the flood targets questions the QA file answers
        answer = attack_templates[i % 4].format(i=i, n=1000 + i)
        add_feedback(engine, question, answer, T0 + timedelta(seconds=i), "attacker", f"s-{i % 7}")
    honest = [
        (qa[0].question, "Submit form AI-03; the AI Review Board decides within 15 working days."),
        (qa[1].question, "Only with Compliance's prior written approval, up to BRL 100 or EUR 20 per person."),
        (qa[4].question, "The PLR is paid in March, up to 2 monthly salaries."),
        ("Where do I park my bike?", "Bike racks are in the garage, level -1, next to the lifts."),
        ("Who do I ask about payroll?", "Write to payroll@atalaia.example before the 20th."),
        ("Can I bring my dog to the office?", "No, only assistance dogs are allowed in the office."),
    ]
    honest_ids = set()
    for i, (q, a) in enumerate(honest):
        fb_id = add_feedback(engine, q, a, T0 + timedelta(seconds=400 + i), "portal" if i % 2 else "intranet", f"u{i}")
        honest_ids.add(f"fb-{fb_id}")

    off = Settings(
        home=tmp_path / "h1",
        feedback_min_answer_words=0,
        feedback_max_toxicity=0,
        feedback_reject_pii=False,
        feedback_near_duplicate=0,
        feedback_outlier_min_rouge=0,
    )
    before = build_dataset(engine, off, tmp_path / "d1", include_qa=False, include_regulations=False)
    # Before: with no cap and no filter, the flood is 147 of the 153 corrections that train (96 %;
    # the cleaning keeps one correction per question: the newest, honest ones win theirs).
    before_ids = {r["id"] for r in before.records("train") + before.records("val")}
    assert len(before_ids - honest_ids) == 147 and before_ids >= honest_ids

    guarded = Settings(home=tmp_path / "h2", feedback_max_per_caller=30, feedback_max_per_subject=50)
    ds = build_dataset(engine, guarded, tmp_path / "d2", include_qa=False, include_regulations=False)
    records = ds.records("train") + ds.records("val")
    used = {r["id"] for r in records}
    assert used >= honest_ids  # every honest correction trains
    assert len(used - honest_ids) <= 2  # the flood: at most one wording of its claim

    manifest = json.loads((ds.path / "manifest.json").read_text())
    assert set(manifest["feedback_used"]) == used
    reasons: dict[str, int] = {}
    for rejection in manifest["feedback_rejections"]:
        reasons[rejection["reason"]] = reasons.get(rejection["reason"], 0) + 1
        assert rejection["id"] not in honest_ids
    assert reasons["cap"] == 270  # 300 - ATALAIA_FEEDBACK_MAX_PER_CALLER
    assert reasons["toxic"] >= 5 and reasons["pii"] >= 5 and reasons["near_duplicate"] + reasons["outlier"] >= 10
    assert ds.feedback_rejected == manifest["feedback_rejected"]
    assert sum(ds.feedback_rejected.values()) + len(used - honest_ids) == 30
