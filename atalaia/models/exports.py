"""Model folders exported to another runtime: ONNX Runtime GenAI (``ort-*``) and OpenVINO GenAI (``ov-*``).

A serving format is ``float32`` (the prepared transformers folder) or an export label such as
``ort-int4`` or ``ov-int8``: the runtime's prefix and the precision. This module is the one
place that maps a label to its runtime: which manifest marks a complete folder, how to export
one, where the base model's cached export lives, and which folder the base model is served from
in ``ATALAIA_SERVING_FORMAT``.

Examples
--------
>>> backend_of("ov-int8"), precision_of("ov-int8"), backend_of("float32")
('ov', 'int8', None)
>>> export_dir_for(Path("/m"), "smol", "ort-int4")
PosixPath('/m/smol-ort-int4')
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - typing only
    from atalaia.settings import Settings

FLOAT32 = "float32"


@dataclass(frozen=True)
class _Runtime:
    manifest: str
    read: Callable[[Path], dict[str, Any]]
    export: Callable[..., dict[str, Any]]


def _runtimes() -> dict[str, _Runtime]:
    from atalaia.models import ortgenai, ovgenai

    return {
        "ort": _Runtime(ortgenai.ORT_MANIFEST, ortgenai.read_ort_manifest, ortgenai.export_ort),
        "ov": _Runtime(ovgenai.OV_MANIFEST, ovgenai.read_ov_manifest, ovgenai.export_ov),
    }


def backend_of(fmt: str) -> str | None:
    """``'ort'`` or ``'ov'`` for an export label; ``None`` for anything else (``float32``...)."""
    prefix, sep, _ = fmt.partition("-")
    return prefix if sep and prefix in ("ort", "ov") else None


def precision_of(fmt: str) -> str:
    """The precision part of an export label (``'int4'`` for ``'ort-int4'``)."""
    return fmt.partition("-")[2]


def is_export_dir(path: Path | str) -> bool:
    """Whether ``path`` holds a complete export (its runtime's manifest is there)."""
    return any((Path(path) / rt.manifest).is_file() for rt in _runtimes().values())


def export_manifest(path: Path | str) -> tuple[str, dict[str, Any]]:
    """The export label and manifest of an export folder.

    Raises
    ------
    ValueError
        When ``path`` is not an export folder or its manifest is unreadable.
    """
    for prefix, rt in _runtimes().items():
        if (Path(path) / rt.manifest).is_file():
            manifest = rt.read(Path(path))
            return f"{prefix}-{manifest['precision']}", manifest
    raise ValueError(f"{path} is not an exported model folder (no ONNX Runtime or OpenVINO manifest)")


def export_model(src_dir: Path | str, out_dir: Path | str, fmt: str) -> dict[str, Any]:
    """Export the float32 folder ``src_dir`` to ``out_dir`` in ``fmt`` (e.g. ``'ov-int8'``).

    Raises
    ------
    ValueError
        When ``fmt`` is not an export label.
    """
    backend = backend_of(fmt)
    if backend is None:
        raise ValueError(f"{fmt!r} is not an export format (ort-<precision> or ov-<precision>)")
    return _runtimes()[backend].export(src_dir, out_dir, precision=precision_of(fmt))


def export_dir_for(models_dir: Path, model_name: str, fmt: str) -> Path:
    """Where the prepared base model's export lives: ``<models_dir>/<name>-<fmt>``."""
    return Path(models_dir) / f"{model_name}-{fmt}"


def prepare_export(base_dir: Path | str, out_dir: Path | str, fmt: str, *, force: bool = False) -> Path:
    """Export the prepared base model once and reuse it while the base is unchanged.

    The export is redone when ``out_dir`` has no complete manifest of ``fmt``, when it was
    exported from another base preparation (the base manifest's ``gguf_sha256`` and ``created``
    are recorded in it), or with ``force``.

    Returns
    -------
    Path
        ``out_dir``.
    """
    from atalaia.models.manifest import write_format_manifest
    from atalaia.models.prepare import read_manifest

    base, out = Path(base_dir), Path(out_dir)
    base_manifest = read_manifest(base) or {}
    stamp = {k: base_manifest.get(k) for k in ("gguf_sha256", "created")}
    if not force and is_export_dir(out):
        try:
            label, current = export_manifest(out)
        except ValueError:
            label, current = "", {}
        if label == fmt and current.get("base") == stamp:
            return out
    export_model(base, out, fmt)
    # Record which base preparation this export came from (the cache key above).
    manifest = export_manifest(out)[1] | {"base": stamp}
    write_format_manifest(out / _runtimes()[str(backend_of(fmt))].manifest, manifest)
    return out


def prepare_serving_format(
    settings: Settings, *, force: bool = False, perplexity: Callable[[Path], float] | None = None
) -> Path:
    """Prepare the base model in ``settings.serving_format`` (``ATALAIA_SERVING_FORMAT``).

    Returns ``settings.generator_path`` for ``float32``, else the cached export of it (see
    :func:`prepare_export`). For ``auto`` the formats are measured on this host and the choice
    recorded (:func:`atalaia.models.serving_choice.choose_serving_format`, which needs
    ``perplexity``: holdout perplexity of a model folder).
    """
    if settings.serving_format == "auto":
        from atalaia.models.serving_choice import choose_serving_format

        if perplexity is None:
            raise ValueError("ATALAIA_SERVING_FORMAT=auto needs a perplexity function to check each format's quality")
        return choose_serving_format(settings, perplexity=perplexity, force=force).path
    if backend_of(settings.serving_format) is None:
        return settings.generator_path
    assert settings.models_dir is not None  # resolved by Settings
    out = export_dir_for(settings.models_dir, settings.generator_model, settings.serving_format)
    return prepare_export(settings.generator_path, out, settings.serving_format, force=force)


def served_base_path(settings: Settings) -> Path:
    """The folder the base model is served from in ``settings.serving_format``.

    Raises
    ------
    GeneratorNotPreparedError
        When the format's export is missing (it is made by ``atalaia models prepare``, not at
        service start: an export takes tens of seconds to minutes).
    """
    from atalaia.models.generator import GeneratorNotPreparedError

    if settings.serving_format == "auto":
        from atalaia.models.serving_choice import chosen_path

        return chosen_path(settings)
    if backend_of(settings.serving_format) is None:
        return settings.generator_path
    assert settings.models_dir is not None  # resolved by Settings
    out = export_dir_for(settings.models_dir, settings.generator_model, settings.serving_format)
    if not is_export_dir(out):
        raise GeneratorNotPreparedError(
            f"ATALAIA_SERVING_FORMAT={settings.serving_format} but {out} is not prepared. "
            "Fix: run `atalaia models prepare` (or set ATALAIA_SERVING_FORMAT=float32)."
        )
    return out
