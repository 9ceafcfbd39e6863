"""Retrieval with the real embedder (all-MiniLM-L6-v2) over the real handbook and QA set.

Builds the index once per module (a few seconds on a CPU), in a temporary cache folder. Skipped
when the embedder cannot be loaded, unless ``ATALAIA_REQUIRE_SERVICES=1``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from inference.rag import RetrievalIndex, build_prompt, hit_rate_at_k, load_or_build, read_qa
from tests.conftest import REQUIRE

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
REGULATIONS = REPO / "data" / "regulations"
QA = REPO / "data" / "qa"
#: Floor of hit-rate@3; measured 0.94 on train and 0.93 on holdout with the default chunking.
MIN_HIT_AT_3 = 0.6


class CountingEmbedder:
    """Wraps the real embedder and counts ``encode`` calls, to see when the cache is used."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.calls = 0

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        self.calls += 1
        return self.inner.encode(texts)  # type: ignore[attr-defined,no-any-return]


@pytest.fixture(scope="module")
def embedder() -> CountingEmbedder:
    try:
        from atalaia.metrics.embedding import Embedder
        from atalaia.models.embedder import load_embedder

        inner = Embedder(load_embedder())
    except Exception as exc:  # noqa: BLE001 - any failure to load means "no embedder here"
        if REQUIRE:
            pytest.fail(f"the embedder is required (ATALAIA_REQUIRE_SERVICES=1) but does not load: {exc}")
        pytest.skip(f"the embedder does not load: {exc}")
    return CountingEmbedder(inner)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("rag-cache")


@pytest.fixture(scope="module")
def index(embedder: CountingEmbedder, cache_dir: Path) -> RetrievalIndex:
    return load_or_build(REGULATIONS, embedder, cache_dir)


def test_hit_rate_holdout_and_train(index: RetrievalIndex) -> None:
    holdout = hit_rate_at_k(index, read_qa(QA / "holdout.jsonl"))
    train = hit_rate_at_k(index, read_qa(QA / "train.jsonl"))
    print(f"hit rate holdout {holdout} train {train}")
    assert holdout[3] >= MIN_HIT_AT_3
    assert train[3] >= MIN_HIT_AT_3
    for rates in (holdout, train):
        assert rates[1] <= rates[3] <= rates[5]


def test_cache_reload_does_not_encode(index: RetrievalIndex, embedder: CountingEmbedder, cache_dir: Path) -> None:
    calls = embedder.calls
    t0 = time.perf_counter()
    again = load_or_build(REGULATIONS, embedder, cache_dir)
    elapsed = time.perf_counter() - t0
    assert embedder.calls == calls
    assert elapsed < 1.0, f"loading the cached index took {elapsed:.3f} s"
    assert again.passages == index.passages
    np.testing.assert_array_equal(again.embeddings, index.embeddings)
    assert again.dim == 384


def test_search_finds_the_section_and_prompt_is_short(index: RetrievalIndex) -> None:
    question = "How many days do I have to submit my expense report after a trip?"
    hits = index.search(question, k=3)
    assert hits[0][0].section == "expense-reports"
    assert "30 calendar days" in hits[0][0].text
    messages = build_prompt(question, [p for p, _ in hits])
    # SmolLM2-135M does best with short prompts: three passages stay well under 500 words.
    assert len(messages[0]["content"].split()) < 500
    vector = index.embedder.encode([question])[0]  # type: ignore[union-attr]
    t0 = time.perf_counter()
    for _ in range(100):
        index.search(vector, k=3)
    assert (time.perf_counter() - t0) / 100 < 0.005  # the vector search itself, without encoding
