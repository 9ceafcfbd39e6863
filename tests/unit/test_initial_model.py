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


def _fake_ort_export(settings: Settings, precision: str = "int4") -> Path:
    """A folder that reads as the base model's ORT export (what `atalaia models prepare` writes)."""
    import json

    from atalaia.models.ortgenai import ORT_FORMAT, ORT_MANIFEST, ort_dir_for

    assert settings.models_dir is not None
    out = ort_dir_for(settings.models_dir, settings.generator_model, precision)
    out.mkdir(parents=True)
    (out / "config.json").write_text("{}")
    (out / ORT_MANIFEST).write_text(json.dumps({"format": ORT_FORMAT, "precision": precision}))
    return out


def test_the_base_version_is_served_in_the_serving_format_whatever_its_row_recorded(tmp_path: Path) -> None:
    """A reviewer's repro: a skipped retrain run had registered the base (float32 folder) as
    active, and ATALAIA_SERVING_FORMAT=ort-int4 was then ignored by serve, the gate and bias."""
    from retrain.registry import ensure_base_registered, get_version, served_version

    settings = Settings(home=tmp_path)
    upgrade(settings.database_url)
    engine = get_engine(settings.database_url)
    settings.generator_path.mkdir(parents=True)
    ensure_base_registered(engine, settings)  # what any retrain run does first
    assert initial_model(settings) == (settings.model_version, settings.generator_path)
    assert get_version(engine, settings.model_version)["quantization"] is None  # type: ignore[index]

    ort = _fake_ort_export(settings)
    as_ort = Settings(home=tmp_path, serving_format="ort-int4")
    assert initial_model(as_ort) == (settings.model_version, ort)
    assert served_version(engine, as_ort).path == ort
    ensure_base_registered(engine, as_ort)
    row = get_version(engine, settings.model_version)
    assert row is not None and row["artefact_path"] == str(ort) and row["quantization"] == "ort-int4"
    # Back to float32: the row follows.
    ensure_base_registered(engine, settings)
    assert get_version(engine, settings.model_version)["artefact_path"] == str(settings.generator_path)  # type: ignore[index]


def test_a_retrained_version_keeps_its_own_folder(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, serving_format="ort-int4")
    upgrade(settings.database_url)
    (tmp_path / "v2").mkdir()
    with get_engine(settings.database_url).begin() as conn:
        conn.execute(
            t.model_versions.insert().values(
                version="m@2",
                parent=settings.model_version,
                status="active",
                artefact_path=str(tmp_path / "v2"),
                metrics={},
                created_at=datetime(2026, 1, 1, tzinfo=UTC),
                activated_at=datetime(2026, 1, 2, tzinfo=UTC),
            )
        )
    assert initial_model(settings) == ("m@2", tmp_path / "v2")  # no ORT export needed for it
