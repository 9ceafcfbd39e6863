"""The regulations handbook and the QA data set under data/ are well formed and consistent.

- data/regulations/: at least 40 sections ``NN-slug.md``, each with ``# Title``, ``Section id: slug``
  (the file's slug) and 150-400 words of numbered clauses;
- data/qa/: train (>= 150), holdout (>= 50) and off-topic (>= 60) JSON Lines with the documented
  fields, unique ids, known sections, every section trained on, most sections held out, no
  question or answer leaking from train to holdout, and answers whose numbers come from the
  section they cite.
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from itertools import product
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
REGULATIONS = ROOT / "data" / "regulations"
QA = ROOT / "data" / "qa"

SECTION_FILE = re.compile(r"^(\d{2})-([a-z0-9]+(?:-[a-z0-9]+)*)\.md$")
CLAUSE = re.compile(r"^(\d+)\.(\d+) ", re.MULTILINE)
NUMBER = re.compile(r"\d+(?:[.,:]\d+)*")
QA_FIELDS = {"id", "question", "answer", "section", "topic"}
NEAR_DUPLICATE = 0.8


def section_files() -> list[Path]:
    return sorted(p for p in REGULATIONS.glob("*.md") if p.name != "README.md")


def parse_section(path: Path) -> tuple[str, str, str]:
    """(title, section id, body) of one section file."""
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines and lines[0].startswith("# "), f"{path.name}: first line must be '# <Title>'"
    rest = [line for line in lines[1:] if line.strip()]
    assert rest and rest[0].startswith("Section id: "), f"{path.name}: 'Section id: <slug>' must follow the title"
    body_start = lines.index(rest[0]) + 1
    return lines[0][2:].strip(), rest[0].removeprefix("Section id: ").strip(), "\n".join(lines[body_start:])


SECTIONS: dict[str, str] = {}
for _path in section_files():
    _title, _sid, _body = parse_section(_path)
    SECTIONS[_sid] = _path.read_text(encoding="utf-8")


def load_jsonl(name: str) -> list[dict[str, Any]]:
    rows = []
    for n, line in enumerate((QA / name).read_text(encoding="utf-8").splitlines(), 1):
        assert line.strip(), f"{name}:{n}: empty line"
        row = json.loads(line)
        assert isinstance(row, dict), f"{name}:{n}: not a JSON object"
        rows.append(row)
    return rows


TRAIN = load_jsonl("train.jsonl")
HOLDOUT = load_jsonl("holdout.jsonl")
OFF_TOPIC = load_jsonl("off_topic.jsonl")


def normalise(text: str) -> str:
    """Lower case, punctuation removed, whitespace collapsed."""
    table = str.maketrans({c: " " for c in string.punctuation + "¿¡’‘“”–—"})
    return " ".join(text.lower().translate(table).split())


def words(text: str) -> set[str]:
    return set(normalise(text).split())


def jaccard(a: str, b: str) -> float:
    wa, wb = words(a), words(b)
    return len(wa & wb) / len(wa | wb) if wa | wb else 1.0


# --- regulations -----------------------------------------------------------------------------


def test_regulations_readme_exists() -> None:
    text = (REGULATIONS / "README.md").read_text(encoding="utf-8")
    assert "fictional" in text.lower() and "CC0" in text


def test_at_least_40_sections_named_nn_slug() -> None:
    files = section_files()
    assert len(files) >= 40
    for path in files:
        assert SECTION_FILE.match(path.name), f"{path.name} is not named NN-slug.md"
    numbers = [path.name[:2] for path in files]
    assert len(set(numbers)) == len(numbers), "section numbers repeat"


@pytest.mark.parametrize("path", section_files(), ids=lambda p: p.name)
def test_section_structure(path: Path) -> None:
    title, sid, body = parse_section(path)
    match = SECTION_FILE.match(path.name)
    assert match is not None
    assert title, f"{path.name}: empty title"
    assert sid == match.group(2), f"{path.name}: Section id {sid!r} differs from the file's slug"
    n_words = len(body.split())
    assert 150 <= n_words <= 400, f"{path.name}: {n_words} words, expected 150-400"
    clauses = CLAUSE.findall(body)
    assert len(clauses) >= 3, f"{path.name}: expected numbered clauses (1.1, 1.2, ...)"
    assert [int(minor) for _, minor in clauses] == list(range(1, len(clauses) + 1)), f"{path.name}: clause numbers"
    assert len({major for major, _ in clauses}) == 1, f"{path.name}: clauses mix section numbers"


def test_section_ids_unique() -> None:
    ids = [parse_section(p)[1] for p in section_files()]
    assert len(set(ids)) == len(ids)


# --- QA data set -----------------------------------------------------------------------------


def test_counts() -> None:
    assert len(TRAIN) >= 150
    assert len(HOLDOUT) >= 50
    assert len(OFF_TOPIC) >= 60


@pytest.mark.parametrize(("name", "rows", "prefix"), [("train", TRAIN, "train"), ("holdout", HOLDOUT, "holdout")])
def test_qa_fields(name: str, rows: list[dict[str, Any]], prefix: str) -> None:
    for row in rows:
        assert set(row) == QA_FIELDS, f"{name} {row.get('id')}: fields {sorted(row)}"
        assert all(isinstance(row[k], str) and row[k].strip() for k in QA_FIELDS), f"{name} {row['id']}: empty field"
        assert re.fullmatch(rf"{prefix}-\d{{4}}", row["id"]), f"{name}: bad id {row['id']!r}"
        assert row["section"] in SECTIONS, f"{name} {row['id']}: unknown section {row['section']!r}"
        assert len(row["answer"].split()) >= 5, f"{name} {row['id']}: answer too short"


def test_off_topic_fields() -> None:
    for row in OFF_TOPIC:
        assert set(row) == {"id", "question"}, f"off_topic {row.get('id')}: fields {sorted(row)}"
        assert re.fullmatch(r"offtopic-\d{4}", row["id"]), f"off_topic: bad id {row['id']!r}"
        assert isinstance(row["question"], str) and row["question"].strip()


def test_ids_unique() -> None:
    ids = [row["id"] for row in TRAIN + HOLDOUT + OFF_TOPIC]
    duplicates = [i for i, n in Counter(ids).items() if n > 1]
    assert not duplicates


def test_questions_unique_within_files() -> None:
    for rows in (TRAIN, HOLDOUT, OFF_TOPIC):
        questions = [normalise(row["question"]) for row in rows]
        assert len(set(questions)) == len(questions)


def test_every_section_has_three_train_questions() -> None:
    per_section = Counter(row["section"] for row in TRAIN)
    thin = {sid: per_section[sid] for sid in SECTIONS if per_section[sid] < 3}
    assert not thin, f"sections with fewer than 3 train questions: {thin}"


def test_holdout_covers_30_sections() -> None:
    assert len({row["section"] for row in HOLDOUT}) >= 30


def test_no_question_in_both_train_and_holdout() -> None:
    train = {normalise(row["question"]) for row in TRAIN}
    shared = [row["id"] for row in HOLDOUT if normalise(row["question"]) in train]
    assert not shared


def test_no_near_duplicates_across_train_and_holdout() -> None:
    close = [
        (t["id"], h["id"], field)
        for t, h in product(TRAIN, HOLDOUT)
        for field in ("question", "answer")
        if jaccard(t[field], h[field]) >= NEAR_DUPLICATE
    ]
    assert not close, f"near-duplicate train/holdout pairs: {close}"


def test_off_topic_not_in_qa() -> None:
    qa = {normalise(row["question"]) for row in TRAIN + HOLDOUT}
    assert not [row["id"] for row in OFF_TOPIC if normalise(row["question"]) in qa]


def test_answer_numbers_come_from_the_section() -> None:
    missing = []
    for row in TRAIN + HOLDOUT:
        section_numbers = set(NUMBER.findall(SECTIONS[row["section"]]))
        missing += [(row["id"], n) for n in NUMBER.findall(row["answer"]) if n not in section_numbers]
    assert not missing, f"numbers not found in the cited section: {missing}"


def test_jaccard_and_normalise() -> None:
    assert normalise("How many  days, exactly?") == "how many days exactly"
    assert jaccard("a b c", "a b c") == 1.0
    assert jaccard("a b", "c d") == 0.0
