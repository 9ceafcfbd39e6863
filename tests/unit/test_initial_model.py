"""At start the service serves the registry's active version when there is one."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from atalaia.settings import Settings
from atalaia.storage import tables as t
from atalaia.storage.db import get_engine, upgrade
from inference.server import initial_model


def _register(url: str, version: str, path: str | None, status: str, when: int) -> None:
    with get_engine(url).begin() as conn:
        conn.execute(
            t.model_versions.insert().values(
                version=version,
                parent=None,
                status=status,
                artefact_path=path,
                quantization=None,
                dataset_hash=None,
                metrics={},
                size_bytes=None,
                created_at=datetime(2026, 1, 1, tzinfo=UTC),
                activated_at=datetime(2026, 1, when, tzinfo=UTC),
            )
        )


def test_configured_model_without_a_registry(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    assert initial_model(settings) == (settings.model_version, settings.generator_path)  # not even migrated
    upgrade(settings.database_url)
    assert initial_model(settings) == (settings.model_version, settings.generator_path)


def test_registry_active_version_wins_when_loadable(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    upgrade(settings.database_url)
    (tmp_path / "v3").mkdir()
    _register(settings.database_url, "m@2", str(tmp_path / "gone"), "active", 2)
    assert initial_model(settings)[0] == settings.model_version  # its folder is missing: not served
    _register(settings.database_url, "m@3", str(tmp_path / "v3"), "active", 3)
    _register(settings.database_url, "m@1", str(tmp_path / "v3"), "retired", 4)
    assert initial_model(settings) == ("m@3", tmp_path / "v3")
