"""Perplexity under the producing version: the registry's folder of ``event.model_version``."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from atalaia.events import ChatMessage, InferenceEvent
from atalaia.metrics.perplexity import VersionedPerplexity
from atalaia.settings import Settings
from atalaia.storage import tables as t
from atalaia.storage.db import get_engine, upgrade
from consumers.scoring import BatchScorer


class FolderScorer:
    """A perplexity scorer that answers with a number tied to the folder it was loaded from."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.value = float(len(folder.name))
        self.texts: list[str] = []

    def score(self, texts: list[str]) -> list[float]:
        self.texts += texts
        return [self.value] * len(texts)


def _register(url: str, version: str, path: Path) -> None:
    with get_engine(url).begin() as conn:
        conn.execute(
            t.model_versions.insert().values(
                version=version,
                parent=None,
                status="retired",
                artefact_path=str(path),
                quantization=None,
                dataset_hash=None,
                metrics={},
                size_bytes=None,
                created_at=datetime(2026, 1, 1, tzinfo=UTC),
                activated_at=None,
            )
        )


def _event(version: str, response: str, provider: str | None = None) -> InferenceEvent:
    return InferenceEvent(
        service="svc",
        model_version=version,
        messages=[ChatMessage(role="user", content="How many vacation days?")],
        response=response,
        latency_ms=100.0,
        prompt_tokens=10,
        completion_tokens=5,
        cost=0.0,
        provider=provider,
    )


def _setup(tmp_path: Path, max_loaded: int = 2) -> tuple[Settings, list[FolderScorer], VersionedPerplexity]:
    settings = Settings(home=tmp_path, metric_groups="operational,perplexity")
    upgrade(settings.database_url)
    for name in ("v1-folder", "v22-folder"):
        (tmp_path / name).mkdir()
    _register(settings.database_url, "m@1", tmp_path / "v1-folder")
    _register(settings.database_url, "m@2", tmp_path / "v22-folder")
    loads: list[FolderScorer] = []

    def loader(folder: Path) -> FolderScorer:
        loads.append(FolderScorer(folder))
        return loads[-1]

    return settings, loads, VersionedPerplexity(settings, loader=loader, max_loaded=max_loaded)


def test_each_event_is_scored_under_the_folder_of_its_own_version(tmp_path: Path) -> None:
    settings, loads, versions = _setup(tmp_path)
    scorer = BatchScorer(settings)
    scorer._versions = versions  # the real registry lookup, fake model loading
    events = [
        _event("m@1", "from one"),
        _event("m@2", "from two"),
        _event("m@1", "one again"),
        _event("m@9", "a version nobody registered"),
        _event("m@2", "a hosted provider's answer", provider="openai"),
    ]
    batch = scorer.score(events)
    ppl = {m.source_event_id: m.value for m in batch.metrics if m.name == "perplexity"}
    assert ppl == {
        events[0].event_id: len("v1-folder"),
        events[1].event_id: len("v22-folder"),
        events[2].event_id: len("v1-folder"),
    }
    assert {s.folder.name: s.texts for s in loads} == {
        "v1-folder": ["from one", "one again"],
        "v22-folder": ["from two"],
    }
    # Other metrics of the unknown version's event are still there; only perplexity is missing.
    assert {m.name for m in batch.metrics if m.source_event_id == events[3].event_id} >= {"latency_ms"}


def test_the_base_version_needs_no_registry_row_and_few_versions_stay_loaded(tmp_path: Path) -> None:
    settings, loads, versions = _setup(tmp_path, max_loaded=1)
    base = versions.scorer(settings.model_version)
    assert base is not None and base.folder == settings.generator_path
    first = versions.scorer("m@1")
    assert versions.loaded() == [tmp_path / "v1-folder"]  # the base was unloaded (LRU, one slot)
    assert versions.scorer("m@1") is first  # kept loaded: no second load
    versions.scorer("m@2")
    assert [s.folder.name for s in loads] == [settings.generator_path.name, "v1-folder", "v22-folder"]
    assert versions.scorer("unknown@0") is None


def test_an_unknown_version_is_looked_up_again_after_a_while(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    settings, _, versions = _setup(tmp_path)
    assert versions.scorer("m@3") is None
    (tmp_path / "v3").mkdir()
    _register(settings.database_url, "m@3", tmp_path / "v3")
    assert versions.scorer("m@3") is None  # the miss is remembered for a while ...
    monkeypatch.setattr(VersionedPerplexity, "MISS_TTL_S", 0.0)
    assert versions.scorer("m@3") is not None  # ... then the registry is asked again
