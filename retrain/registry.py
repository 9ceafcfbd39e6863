"""The model registry: rows of ``model_versions`` and the folders they point at.

Statuses: ``active`` (served), ``candidate`` (registered, deploy pending), ``retired`` (replaced by
a newer active version), ``rolled_back`` (deployed, then withdrawn by the canary or by hand).
A version is registered in one transaction only after its folder is complete (written under a
temporary name and renamed), so a crash never leaves a half-registered version.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, insert, select, update

from atalaia.events import utcnow
from atalaia.settings import Settings
from atalaia.storage import tables as t
from atalaia.storage.repository import active_model_version

log = logging.getLogger(__name__)

PARTIAL_SUFFIX = ".partial"


@dataclass(frozen=True)
class ServedVersion:
    """The version inference serves now: from the registry, or the configured base model."""

    version: str
    path: Path
    registered: bool
    metrics: dict[str, Any]


def folder_size(path: Path) -> int:
    """Bytes of every file under ``path``."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def served_version(engine: Engine, settings: Settings) -> ServedVersion:
    """The active registry row when it has a folder, else the configured base model; the base
    version is served in ``ATALAIA_SERVING_FORMAT`` (:func:`atalaia.models.serving_choice.registered_folder`)."""
    from atalaia.models.exports import served_base_path
    from atalaia.models.serving_choice import registered_folder

    row = active_model_version(engine)
    folder = registered_folder(settings, row) if row is not None else None
    if row is not None and folder is not None:
        return ServedVersion(str(row["version"]), folder, True, dict(row["metrics"] or {}))
    return ServedVersion(settings.model_version, served_base_path(settings), False, {})


def base_quantization(path: Path) -> str | None:
    """The ``model_versions.quantization`` of a base-model folder: ``ort-<precision>`` / ``ov-<precision>``
    for an ONNX Runtime or OpenVINO GenAI export, ``None`` for the float32 folder."""
    from atalaia.models.exports import is_export_dir
    from atalaia.models.serving_choice import folder_format

    return folder_format(path) if is_export_dir(path) else None


def ensure_base_registered(engine: Engine, settings: Settings) -> ServedVersion:
    """Register the configured base model as ``active`` when the registry has no active version.

    Lineage then starts at the base model, and a rollback from the first fine-tuned version has a
    row to return to.
    """
    current = served_version(engine, settings)
    if current.registered:
        if current.version == settings.model_version:
            # The base row follows ATALAIA_SERVING_FORMAT: record the folder and format served now.
            with engine.begin() as conn:
                conn.execute(
                    update(t.model_versions)
                    .where(t.model_versions.c.version == current.version)
                    .where(t.model_versions.c.parent.is_(None))
                    .values(artefact_path=str(current.path), quantization=base_quantization(current.path))
                )
        return current
    now = utcnow()
    with engine.begin() as conn:
        exists = conn.execute(
            select(t.model_versions.c.version).where(t.model_versions.c.version == current.version)
        ).first()
        values = {
            "status": "active",
            "artefact_path": str(current.path),
            "activated_at": now,
            # The format it is served in now (None: float32 transformers, as before ORT existed).
            "quantization": base_quantization(current.path),
        }
        if exists:
            conn.execute(update(t.model_versions).where(t.model_versions.c.version == current.version).values(**values))
        else:
            conn.execute(
                insert(t.model_versions).values(
                    version=current.version,
                    parent=None,
                    dataset_hash=None,
                    metrics={},
                    size_bytes=folder_size(current.path) if current.path.is_dir() else None,
                    created_at=now,
                    **values,
                )
            )
    return served_version(engine, settings)


def update_metrics(engine: Engine, version: str, metrics: dict[str, Any]) -> None:
    """Merge ``metrics`` into a version's stored metrics (for example its holdout scores)."""
    with engine.begin() as conn:
        row = conn.execute(select(t.model_versions.c.metrics).where(t.model_versions.c.version == version)).first()
        if row is None:
            return
        merged = {**(row[0] or {}), **metrics}
        conn.execute(update(t.model_versions).where(t.model_versions.c.version == version).values(metrics=merged))


def publish_folder(staging: Path, final: Path) -> Path:
    """Move a complete folder into place atomically (same filesystem rename)."""
    if final.exists():
        shutil.rmtree(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging.rename(final)
    return final


def register_candidate(
    engine: Engine,
    *,
    version: str,
    parent: str,
    path: Path,
    quantization: str | None,
    dataset_hash: str,
    metrics: dict[str, Any],
) -> None:
    """Insert a ``candidate`` row for a complete folder, in one transaction."""
    with engine.begin() as conn:
        conn.execute(
            insert(t.model_versions).values(
                version=version,
                parent=parent,
                status="candidate",
                artefact_path=str(path),
                quantization=quantization,
                dataset_hash=dataset_hash,
                metrics=metrics,
                size_bytes=folder_size(path),
                created_at=utcnow(),
                activated_at=None,
            )
        )


def activate(engine: Engine, version: str) -> str | None:
    """Mark ``version`` active and the previously active one retired; return the previous one."""
    previous = active_model_version(engine)
    now = utcnow()
    with engine.begin() as conn:
        if previous is not None and previous["version"] != version:
            conn.execute(
                update(t.model_versions)
                .where(t.model_versions.c.version == previous["version"])
                .values(status="retired")
            )
        conn.execute(
            update(t.model_versions)
            .where(t.model_versions.c.version == version)
            .values(status="active", activated_at=now)
        )
    return str(previous["version"]) if previous is not None and previous["version"] != version else None


def roll_back(engine: Engine, version: str, to_version: str, reason: str) -> None:
    """Mark ``version`` rolled back and ``to_version`` active again, with the reason."""
    now = utcnow()
    with engine.begin() as conn:
        row = conn.execute(select(t.model_versions.c.metrics).where(t.model_versions.c.version == version)).first()
        metrics = {**((row[0] if row else None) or {}), "rollback_reason": reason}
        conn.execute(
            update(t.model_versions)
            .where(t.model_versions.c.version == version)
            .values(status="rolled_back", metrics=metrics)
        )
        conn.execute(
            update(t.model_versions)
            .where(t.model_versions.c.version == to_version)
            .values(status="active", activated_at=now)
        )


def get_version(engine: Engine, version: str) -> dict[str, Any] | None:
    """One registry row."""
    with engine.connect() as conn:
        row = conn.execute(select(t.model_versions).where(t.model_versions.c.version == version)).mappings().first()
    return dict(row) if row is not None else None


def list_versions(engine: Engine) -> list[dict[str, Any]]:
    """Every registry row, newest first."""
    with engine.connect() as conn:
        rows = conn.execute(select(t.model_versions).order_by(t.model_versions.c.created_at.desc())).mappings()
        return [dict(r) for r in rows]


def remove_partial_folders(models_dir: Path) -> list[Path]:
    """Delete folders a crashed run left half-written; return what was removed."""
    removed = []
    if models_dir.is_dir():
        for path in models_dir.glob(f"*{PARTIAL_SUFFIX}"):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    for path in removed:
        log.warning("removed a half-written model folder", extra={"path": str(path)})
    return removed
