"""Unit tests of retrain.dataset: sources, cleaning, redaction, dedup, split, content hash (SQLite)."""

from __future__ import annotations

import builtins
import io
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine

from atalaia.settings import Settings
from atalaia.storage.tables import feedback, inference_events, metadata
from retrain.dataset import (
    DatasetVersion,
    build_dataset,
    clean_pairs,
    content_hash,
    count_new_feedback,
    load_qa,
    regulation_pairs,
    split_sentences,
)

ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    eng = create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    metadata.create_all(eng)
    return eng


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home")


def add_feedback(
    engine: Engine, question: str, corrected: str | None, ts: datetime = T0, *, with_event: bool = True
) -> str:
    event_id = str(uuid.uuid4())
    with engine.begin() as conn:
        if with_event:
            conn.execute(
                inference_events.insert(),
                {
                    "event_id": event_id,
                    "ts": ts,
                    "service": "s",
                    "model_version": "m@1",
                    "messages": [{"role": "system", "content": "ctx"}, {"role": "user", "content": question}],
                    "response": "wrong",
                    "context": [],
                    "latency_ms": 1.0,
                    "prompt_tokens": 1,
                    "completion_tokens": 1,
                    "cost": 0.0,
                    "cache_hit": False,
                    "reference": None,
                    "request_id": None,
                    "metadata": {},
                    "ingested_at": ts,
                },
            )
        conn.execute(
            feedback.insert(),
            {
                "event_id": str(uuid.uuid4()),
                "inference_event_id": event_id,
                "ts": ts,
                "rating": -1,
                "corrected_answer": corrected,
                "comment": None,
                "metadata": {},
                "ingested_at": ts,
            },
        )
    return event_id


def test_regulation_pairs_cover_every_section_and_quote_the_handbook() -> None:
    pairs = regulation_pairs(ROOT / "data" / "regulations")
    sections = {p["section"] for p in pairs}
    assert len(sections) == 44
    assert len(pairs) > 500
    expense = [p for p in pairs if p["section"] == "expense-reports"]
    assert any("30 calendar days" in p["answer"] for p in expense)
    for p in pairs[:50]:
        assert p["question"].startswith("What does the ") and p["question"].endswith("?")
        assert len(p["answer"].split()) >= 6
    assert len({p["id"] for p in pairs}) == len(pairs)


def test_split_sentences_keeps_decimals_and_bullets() -> None:
    text = "Pay 1.5 times the rate. Then:\n- submit form HR-07;\n- wait 2 days."
    assert split_sentences(text) == ["Pay 1.5 times the rate.", "Then:", "submit form HR-07;", "wait 2 days."]


def test_clean_pairs_filters_lengths_dedups_by_precedence_and_redacts_only_feedback() -> None:
    records, dropped, redactions = clean_pairs(
        [
            (
                "feedback",
                [
                    {"id": "f1", "question": "Call me on +55 11 91234-5678 about leave?", "answer": "Thirty days."},
                    {"id": "f2", "question": "How many days of leave?", "answer": "30 days, ask HR."},
                    {"id": "f3", "question": "x", "answer": "too short question"},
                    {"id": "f4", "question": "Long?", "answer": " ".join(["word"] * 200)},
                    {"id": "f5", "question": "   ", "answer": "empty question"},
                ],
                True,
            ),
            (
                "qa",
                [
                    {"id": "q1", "question": "how many DAYS of leave", "answer": "Other."},
                    {
                        "id": "q2",
                        "question": "Who is on call? +55 11 3090 4911",
                        "answer": "The ASO, +55 11 3090 4911.",
                    },
                ],
                False,
            ),
        ],
        max_answer_words=80,
    )
    ids = [r["id"] for r in records]
    assert ids == ["f1", "f2", "q2"]
    assert records[0]["question"] == "Call me on [PHONE] about leave?"
    assert redactions == {"phone": 1}
    assert "+55 11 3090 4911" in records[2]["answer"]  # curated data keeps the published number
    assert dropped == {"empty": 1, "too_short": 1, "too_long": 1, "duplicate": 1}


def test_build_dataset_from_feedback_qa_and_regulations(engine: Engine, settings: Settings, tmp_path: Path) -> None:
    train_q = load_qa(settings.qa_train_file)[0].question  # type: ignore[arg-type]
    add_feedback(engine, train_q, "Corrected: form AI-03, write to ana.souza@example.com.")
    add_feedback(engine, "What is my CPF 123.456.789-09 used for?", "Payroll only.", T0 + timedelta(minutes=1))
    add_feedback(engine, "No correction here", None)
    add_feedback(engine, "Blank correction", "   ")
    add_feedback(engine, "Orphan feedback", "Its inference event never arrived.", with_event=False)

    # The feedback filter would reject the correction holding a personal e-mail outright
    # (test_feedback_filter.py); with its PII check off, the cleaning still redacts it.
    settings = settings.model_copy(update={"feedback_reject_pii": False})
    ds = build_dataset(engine, settings, tmp_path / "datasets")
    assert ds.n_feedback == 2
    assert ds.n_qa == 211  # one curated question is overridden by its feedback correction
    assert ds.n_regulations > 500
    assert ds.n_train + ds.n_val == ds.n_feedback + ds.n_qa + ds.n_regulations
    assert ds.n_val > 0 and ds.n_train > ds.n_val
    assert ds.path == tmp_path / "datasets" / ds.content_hash
    assert ds.redactions == {"email": 1, "cpf": 1}
    records = ds.records("train") + ds.records("val")
    corrected = [r for r in records if r["question"] == train_q]
    assert len(corrected) == 1 and corrected[0]["source"] == "feedback"
    assert "[EMAIL]" in corrected[0]["answer"]
    text = ds.train_path.read_text() + ds.val_path.read_text()
    assert "ana.souza@example.com" not in text and "123.456.789-09" not in text
    assert DatasetVersion.load(ds.path) == ds
    manifest = json.loads((ds.path / "manifest.json").read_text())
    assert manifest["content_hash"] == ds.content_hash == content_hash(ds.records("train"), ds.records("val"))


def test_content_hash_is_stable_and_tracks_new_data(engine: Engine, settings: Settings, tmp_path: Path) -> None:
    add_feedback(engine, "Can I carry leave over?", "Up to 10 days, until 31 March.")
    first = build_dataset(engine, settings, tmp_path / "a", include_regulations=False)
    again = build_dataset(engine, settings, tmp_path / "b", include_regulations=False)
    assert first.content_hash == again.content_hash
    assert first.train_path.read_bytes() == again.train_path.read_bytes()
    mtime = first.train_path.stat().st_mtime_ns
    assert build_dataset(engine, settings, tmp_path / "a", include_regulations=False) == first
    assert first.train_path.stat().st_mtime_ns == mtime  # an existing version is reused, not rewritten

    add_feedback(engine, "Is parking free?", "Yes, for employees with a badge.", T0 + timedelta(hours=1))
    grown = build_dataset(engine, settings, tmp_path / "a", include_regulations=False)
    assert grown.content_hash != first.content_hash
    assert (tmp_path / "a" / first.content_hash).is_dir() and (tmp_path / "a" / grown.content_hash).is_dir()


def test_since_and_count_new_feedback(engine: Engine, settings: Settings, tmp_path: Path) -> None:
    assert count_new_feedback(engine, None) == 0
    add_feedback(engine, "Old question?", "Old answer.", T0)
    add_feedback(engine, "New question?", "New answer.", T0 + timedelta(days=1))
    add_feedback(engine, "Rating only?", None, T0 + timedelta(days=1))
    assert count_new_feedback(engine, None) == 2
    assert count_new_feedback(engine, T0) == 1
    assert count_new_feedback(engine, T0 + timedelta(days=2)) == 0
    ds = build_dataset(engine, settings, tmp_path / "d", since=T0, include_qa=False, include_regulations=False)
    assert ds.n_feedback == 1 and ds.n_train + ds.n_val == 1 and ds.n_train == 1


def test_nothing_to_train_on_raises(engine: Engine, settings: Settings, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no training data"):
        build_dataset(engine, settings, tmp_path / "d", include_qa=False, include_regulations=False)


def test_build_dataset_never_reads_the_holdout(
    engine: Engine, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[str] = []
    real_open, real_io_open = builtins.open, io.open
    real_path_open, real_read_text, real_read_bytes = Path.open, Path.read_text, Path.read_bytes

    def track(path: object) -> None:
        opened.append(str(path))
        if "holdout" in Path(str(path)).name:
            raise AssertionError(f"build_dataset opened the holdout file {path}")

    def fake_open(file: object, *args: object, **kwargs: object) -> object:
        track(file)
        return real_open(file, *args, **kwargs)  # type: ignore[call-overload]

    def fake_io_open(file: object, *args: object, **kwargs: object) -> object:
        track(file)
        return real_io_open(file, *args, **kwargs)  # type: ignore[call-overload]

    def fake_path_open(self: Path, *args: object, **kwargs: object) -> object:
        track(self)
        return real_path_open(self, *args, **kwargs)  # type: ignore[call-overload]

    def fake_read_text(self: Path, *args: object, **kwargs: object) -> str:
        track(self)
        return real_read_text(self, *args, **kwargs)  # type: ignore[arg-type]

    def fake_read_bytes(self: Path) -> bytes:
        track(self)
        return real_read_bytes(self)

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(io, "open", fake_io_open)
    monkeypatch.setattr(Path, "open", fake_path_open)
    monkeypatch.setattr(Path, "read_text", fake_read_text)
    monkeypatch.setattr(Path, "read_bytes", fake_read_bytes)
    add_feedback(engine, "Anything new?", "Yes.")
    ds = build_dataset(engine, settings, tmp_path / "d")
    assert ds.n_qa > 0 and ds.n_regulations > 0
    assert any(p.endswith("train.jsonl") for p in opened)  # the tracking saw the files it did read
    assert not [p for p in opened if "holdout" in p]
    # The holdout questions are not in the data set either (the QA files share none).
    monkeypatch.undo()
    holdout = {i.question for i in load_qa(ROOT / "data" / "qa" / "holdout.jsonl")}
    assert not holdout & {r["question"] for r in ds.records("train") + ds.records("val")}


def test_dataset_sources_setting_picks_the_sources(engine: Engine, tmp_path: Path) -> None:
    add_feedback(engine, "Who signs the vendor contract?", "The procurement lead signs contracts above 10,000 EUR.")
    only_feedback = Settings(home=tmp_path / "home", dataset_sources="feedback")
    ds = build_dataset(engine, only_feedback, tmp_path / "a")
    assert (ds.n_feedback, ds.n_qa, ds.n_regulations) == (1, 0, 0)
    curated = Settings(home=tmp_path / "home", dataset_sources="qa")
    ds = build_dataset(engine, curated, tmp_path / "b")
    assert ds.n_feedback == 0 and ds.n_qa > 0 and ds.n_regulations == 0
    empty = create_engine("sqlite://")
    metadata.create_all(empty)
    with pytest.raises(ValueError, match="ATALAIA_DATASET_SOURCES=feedback"):
        build_dataset(empty, only_feedback, tmp_path / "c")


def test_dataset_sources_setting_rejects_unknown_sources() -> None:
    with pytest.raises(ValueError, match="name one or more of feedback, qa, regulations"):
        Settings(dataset_sources="feedback,wiki")
    assert Settings(dataset_sources=" qa , feedback,qa").dataset_sources == "qa,feedback"


def test_a_feedback_flood_from_one_caller_is_capped(engine: Engine, tmp_path: Path) -> None:
    """One caller sends 200 crafted corrections, an honest one sends 3: with the cap, the flood
    contributes at most ATALAIA_FEEDBACK_MAX_PER_CALLER pairs and the honest ones all stay."""
    from sqlalchemy import update

    for i in range(200):
        add_feedback(engine, f"Crafted question {i}?", f"Crafted answer number {i}.", T0 + timedelta(seconds=i))
    with engine.begin() as conn:
        conn.execute(update(feedback).values(caller="attacker", subject_id="s-attacker"))
    for i in range(3):
        add_feedback(engine, f"Honest question {i}?", f"Honest answer {i}.", T0 + timedelta(seconds=i))
    with engine.begin() as conn:
        conn.execute(update(feedback).where(feedback.c.caller.is_(None)).values(caller="portal", subject_id="s-1"))

    # The caps alone: the near-duplicate filter would also fold these numbered answers
    # (test_feedback_filter.py floods with the filter on).
    uncapped = build_dataset(
        engine,
        Settings(home=tmp_path / "h1", feedback_near_duplicate=0),
        tmp_path / "d1",
        include_qa=False,
        include_regulations=False,
    )
    assert uncapped.n_feedback == 203  # before: the flood is 98.5 % of the training data
    capped_settings = Settings(
        home=tmp_path / "h2", feedback_max_per_caller=10, feedback_max_per_subject=50, feedback_near_duplicate=0
    )
    ds = build_dataset(engine, capped_settings, tmp_path / "d2", include_qa=False, include_regulations=False)
    assert ds.n_feedback == 13
    assert ds.dropped["caller_cap"] == 190
    records = ds.records("train") + ds.records("val")
    assert sum(r["question"].startswith("Honest") for r in records) == 3
    # The run's data set records which corrections it used, by feedback event id.
    assert all(r["id"].startswith("fb-") for r in records)
