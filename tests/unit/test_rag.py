"""Unit tests of inference.rag: chunking, the index and its cache, prompts and hit rate (no model)."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import pytest

from inference.rag import (
    DEFAULT_SYSTEM,
    HashingEmbedder,
    Passage,
    RegulationsError,
    RetrievalIndex,
    build_prompt,
    chunk_regulations,
    hit_rate_at_k,
    load_or_build,
)

REGULATIONS = Path(__file__).resolve().parents[2] / "data" / "regulations"
CLAUSE = re.compile(r"^\d+\.\d+ ")


def _section(folder: Path, name: str, title: str, slug: str, clauses: list[str]) -> Path:
    number = int(name[:2])
    body = "\n\n".join(f"{number}.{j} {text}" for j, text in enumerate(clauses, start=1))
    path = folder / name
    path.write_text(f"# {title}\n\nSection id: {slug}\n\n{body}\n", encoding="utf-8")
    return path


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """A tiny handbook of three sections with distinct vocabularies, plus a README to ignore."""
    folder = tmp_path / "regs"
    folder.mkdir()
    _section(
        folder,
        "01-annual-leave.md",
        "Annual Leave",
        "annual-leave",
        ["Employees get 30 vacation days per year.", "Vacation requests go through PeopleHub.", "Unused days expire."],
    )
    _section(
        folder,
        "02-corporate-card.md",
        "Corporate Card",
        "corporate-card",
        ["The corporate card limit is BRL 20,000 per month.", "Lost cards are blocked by phone."],
    )
    _section(
        folder,
        "03-passwords.md",
        "Passwords",
        "passwords",
        ["Passwords have at least 14 characters.", "MFA is mandatory for every account."],
    )
    (folder / "README.md").write_text("# Not a section\n\nNo section id here.\n", encoding="utf-8")
    return folder


# ------------------------------------------------------------------------------------------------
# Chunking


def _clauses_of(text: str) -> list[str]:
    """The first line of each clause (``"13.2 An expense report ..."``), which identifies it."""
    return [line for line in text.splitlines() if CLAUSE.match(line)]


@pytest.mark.parametrize("max_words", [20, 60, 120, 400])
def test_every_real_clause_in_exactly_one_passage(max_words: int) -> None:
    passages = chunk_regulations(REGULATIONS, max_words=max_words)
    sections = sorted(REGULATIONS.glob("[0-9][0-9]-*.md"))
    assert {p.section for p in passages} == {f.stem[3:] for f in sections}
    source_clauses = [c for f in sections for c in _clauses_of(f.read_text(encoding="utf-8"))]
    passage_clauses = [c for p in passages for c in _clauses_of(p.text)]
    assert sorted(passage_clauses) == sorted(source_clauses)  # none lost, none duplicated
    assert len(set(source_clauses)) == len(source_clauses)
    for p in passages:
        # Bullet lists stay with their clause; a passage over the limit is a single long clause.
        assert len(p.body.split()) <= max_words or len(_clauses_of(p.text)) == 1
        assert p.body.startswith(tuple(f"{n}." for n in range(1, 100)))


def test_bullets_stay_with_their_clause() -> None:
    passages = chunk_regulations(REGULATIONS)
    per_diem = next(p for p in passages if "11.2 Per diem rates are:" in p.text)
    assert "- international travel to any other country: USD 85 per day." in per_diem.text


def test_ids_unique_stable_and_titles_prefixed() -> None:
    first = chunk_regulations(REGULATIONS)
    again = chunk_regulations(REGULATIONS)
    assert first == again
    ids = [p.id for p in first]
    assert len(set(ids)) == len(ids)
    expense = [p for p in first if p.section == "expense-reports"]
    assert [p.id for p in expense] == [f"expense-reports#{i}" for i in range(1, len(expense) + 1)]
    for p in first:
        assert p.text.startswith(p.title + "\n")
        assert p.title and not p.title.startswith("#")
    assert expense[0].title == "Expense Reports"


def test_passages_are_balanced(tmp_path: Path) -> None:
    # Clauses of 4, 4, 4 and 2 words (the clause number counts) at 12 words per passage: greedy
    # packing would give [4 + 4 + 4] and a 2-word stub; the balanced split keeps two passages.
    _section(tmp_path, "01-x.md", "X", "x", ["aa bb cc", "dd ee ff", "gg hh ii", "jj"])
    bodies = [p.body for p in chunk_regulations(tmp_path, max_words=12)]
    assert bodies == ["1.1 aa bb cc\n1.2 dd ee ff", "1.3 gg hh ii\n1.4 jj"]
    # A clause longer than the limit is a passage of its own, whole.
    assert [p.body for p in chunk_regulations(tmp_path, max_words=3)] == [
        "1.1 aa bb cc",
        "1.2 dd ee ff",
        "1.3 gg hh ii",
        "1.4 jj",
    ]


def test_readme_ignored_and_errors(corpus: Path, tmp_path: Path) -> None:
    assert {p.section for p in chunk_regulations(corpus)} == {"annual-leave", "corporate-card", "passwords"}
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "README.md").write_text("# nothing\n", encoding="utf-8")
    with pytest.raises(RegulationsError, match="no section files"):
        chunk_regulations(empty)
    with pytest.raises(RegulationsError, match="does not exist"):
        chunk_regulations(tmp_path / "missing")
    (corpus / "04-broken.md").write_text("# Broken\n\n4.1 No id line.\n", encoding="utf-8")
    with pytest.raises(RegulationsError, match=r"04-broken\.md has no 'Section id: <slug>' line"):
        chunk_regulations(corpus)
    (corpus / "04-broken.md").write_text("# Dup\n\nSection id: passwords\n\n4.1 Same id.\n", encoding="utf-8")
    with pytest.raises(RegulationsError, match="used by both"):
        chunk_regulations(corpus)
    with pytest.raises(ValueError, match="max_words"):
        chunk_regulations(corpus, max_words=0)


# ------------------------------------------------------------------------------------------------
# Index


def test_search_ordering_and_batch(corpus: Path) -> None:
    index = RetrievalIndex.build(chunk_regulations(corpus), HashingEmbedder())
    hits = index.search("corporate card limit per month", k=3)
    assert hits[0][0].section == "corporate-card"
    scores = [s for _, s in hits]
    assert scores == sorted(scores, reverse=True)
    assert all(-1.0 - 1e-6 <= s <= 1.0 + 1e-6 for s in scores)
    assert len(index.search("anything", k=50)) == len(index)
    many = index.search_many(["corporate card limit per month", "MFA passwords characters"], k=2)
    assert [p.id for p, _ in many[0]] == [p.id for p, _ in hits[:2]]
    assert many[1][0][0].section == "passwords"
    assert index.search_many([], k=3) == []
    # A query vector gives the same answer as its text.
    vec = HashingEmbedder().encode(["corporate card limit per month"])[0]
    assert [p.id for p, _ in index.search(vec, k=3)] == [p.id for p, _ in hits]
    with pytest.raises(ValueError, match="k must be"):
        index.search("x", k=0)


def test_build_embeds_in_one_call_and_query_cache(corpus: Path) -> None:
    embedder = HashingEmbedder()
    index = RetrievalIndex.build(chunk_regulations(corpus), embedder)
    assert embedder.calls == 1
    index.search("vacation days")
    index.search("vacation days")
    assert embedder.calls == 2  # the repeated question reused its embedding
    index.search_many(["a", "b", "c"])
    assert embedder.calls == 3  # one batch


def test_save_load_round_trip(corpus: Path, tmp_path: Path) -> None:
    index = RetrievalIndex.build(chunk_regulations(corpus), HashingEmbedder(), meta={"note": "ção"})
    path = index.save(tmp_path / "idx" / "index.npz")
    with np.load(path, allow_pickle=False) as data:  # loadable without pickle
        assert set(data.files) == {"embeddings", "meta"}
        assert json.loads(str(data["meta"]))["meta"] == {"note": "ção"}
    loaded = RetrievalIndex.load(path, embedder=HashingEmbedder())
    assert loaded.passages == index.passages
    assert loaded.meta == {"note": "ção"}
    assert loaded.embeddings.dtype == np.float32
    np.testing.assert_array_equal(loaded.embeddings, index.embeddings)
    assert loaded.search("vacation days") == index.search("vacation days")
    without = RetrievalIndex.load(path)
    with pytest.raises(ValueError, match="no embedder"):
        without.search("vacation days")
    assert without.search(HashingEmbedder().encode(["vacation"])[0], k=1)[0][0].section == "annual-leave"
    (tmp_path / "junk.npz").write_bytes(b"not an index")
    (tmp_path / "cut.npz").write_bytes(path.read_bytes()[:200])  # a zip cut short
    np.savez(tmp_path / "other.npz", embeddings=np.zeros((1, 4)), meta=np.array('{"format": 0}'))
    for bad in ("junk.npz", "cut.npz", "other.npz", "missing.npz"):
        with pytest.raises(ValueError, match="not a readable retrieval index"):
            RetrievalIndex.load(tmp_path / bad)
    assert not list((tmp_path / "idx").glob("*.tmp"))


def test_load_or_build_cache(corpus: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    embedder = HashingEmbedder()
    first = load_or_build(corpus, embedder, cache)
    assert embedder.calls == 1
    t0 = time.perf_counter()
    second = load_or_build(corpus, embedder, cache)
    assert time.perf_counter() - t0 < 0.5
    assert embedder.calls == 1  # unchanged handbook: loaded, nothing encoded
    assert second.passages == first.passages
    np.testing.assert_array_equal(second.embeddings, first.embeddings)

    path = corpus / "03-passwords.md"
    path.write_text(path.read_text(encoding="utf-8").replace("14 characters", "16 characters"), encoding="utf-8")
    third = load_or_build(corpus, embedder, cache)
    assert embedder.calls == 2  # one edited file: rebuilt
    assert any("16 characters" in p.text for p in third.passages)
    load_or_build(corpus, embedder, cache)
    assert embedder.calls == 2

    load_or_build(corpus, embedder, cache, max_words=5)  # other chunking: another cache entry
    assert embedder.calls == 3
    load_or_build(corpus, HashingEmbedder(dim=32), cache)  # another embedder: another entry
    load_or_build(corpus, embedder, cache, name="other-model")
    assert embedder.calls == 4
    assert len(list(cache.glob("*.npz"))) == 5

    for f in cache.glob("*.npz"):  # a corrupt cache file is rebuilt, not fatal
        f.write_bytes(b"garbage")
    load_or_build(corpus, embedder, cache)
    assert embedder.calls == 5


# ------------------------------------------------------------------------------------------------
# Prompt and evaluation


def test_build_prompt_shape() -> None:
    passages = [
        Passage("leave#1", "leave", "Annual Leave", "Annual Leave\n1.1 Thirty days."),
        Passage("card#2", "card", "Corporate Card", "Corporate Card\n2.3 Limit BRL 20,000."),
    ]
    messages = build_prompt("  How many days?  ", passages)
    assert [m["role"] for m in messages] == ["system", "user"]
    assert all(set(m) == {"role", "content"} for m in messages)
    system = messages[0]["content"]
    assert system.startswith(DEFAULT_SYSTEM)
    assert "[Annual Leave (leave#1)]\n1.1 Thirty days." in system
    assert system.index("leave#1") < system.index("card#2")  # best passage first
    assert system.count("Annual Leave") == 1  # the retrieval title prefix is not repeated
    assert messages[1]["content"] == "How many days?"
    assert build_prompt("Q?", [], system="Only this.") == [
        {"role": "system", "content": "Only this."},
        {"role": "user", "content": "Q?"},
    ]


def test_hit_rate_on_tiny_corpus(corpus: Path) -> None:
    index = RetrievalIndex.build(chunk_regulations(corpus), HashingEmbedder())
    qa = [
        {"question": "How many vacation days per year?", "section": "annual-leave"},
        {"question": "What is the corporate card limit?", "section": "corporate-card"},
        {"question": "Is MFA mandatory?", "section": "passwords"},
        {"question": "Who pays for lunch?", "section": "meals"},  # not in the corpus: never a hit
    ]
    rates = hit_rate_at_k(index, qa, ks=(3, 1, 5))
    assert list(rates) == [1, 3, 5]
    assert rates[1] == 0.75
    assert rates[5] == 0.75
    assert rates[1] <= rates[3] <= rates[5]
    assert all(np.isnan(v) for v in hit_rate_at_k(index, [], ks=(1,)).values())
