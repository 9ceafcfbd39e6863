"""Unit tests of the ONNX Runtime GenAI backend's files and settings (no model is run here;
``tests/integration/test_models.py`` runs the generator suite on the real export)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from atalaia.models.exports import served_base_path
from atalaia.models.generator import GeneratorNotPreparedError
from atalaia.models.ortgenai import (
    ORT_MANIFEST,
    OrtExportError,
    _patch_genai_config,
    export_ort,
    is_ort_dir,
    ort_dir_for,
    quantization_label,
    read_ort_manifest,
)
from atalaia.settings import Settings


def _write_manifest(folder: Path, **fields: object) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ORT_MANIFEST).write_text(json.dumps({"format": 1, "precision": "int4", **fields}), encoding="utf-8")


def test_manifest_marks_a_complete_folder(tmp_path: Path) -> None:
    assert not is_ort_dir(tmp_path)
    _write_manifest(tmp_path)
    assert is_ort_dir(tmp_path)
    assert read_ort_manifest(tmp_path)["precision"] == "int4"


@pytest.mark.parametrize("fields", [{"format": 2}, {"precision": "int3"}])
def test_bad_manifest_is_refused(tmp_path: Path, fields: dict[str, object]) -> None:
    _write_manifest(tmp_path, **fields)
    with pytest.raises(ValueError):
        read_ort_manifest(tmp_path)


def test_generation_ends_at_im_end_only(tmp_path: Path) -> None:
    config = tmp_path / "genai_config.json"
    config.write_text(json.dumps({"model": {"eos_token_id": [1, 2], "pad_token_id": 2}}), encoding="utf-8")
    _patch_genai_config(config)
    assert json.loads(config.read_text(encoding="utf-8"))["model"]["eos_token_id"] == 2


def test_export_needs_a_model_folder(tmp_path: Path) -> None:
    with pytest.raises(OrtExportError, match="atalaia models prepare"):
        export_ort(tmp_path / "missing", tmp_path / "out")
    with pytest.raises(ValueError):
        export_ort(tmp_path, tmp_path / "out", precision="int3")


def test_served_base_path_follows_the_serving_format(tmp_path: Path) -> None:
    plain = Settings(home=tmp_path)
    assert served_base_path(plain) == plain.generator_path
    ort = Settings(home=tmp_path, serving_format="ort-int4")
    assert ort.models_dir is not None
    expected = ort_dir_for(ort.models_dir, ort.generator_model, "int4")
    assert expected.name == f"{ort.generator_model}-{quantization_label('int4')}"
    with pytest.raises(GeneratorNotPreparedError, match="ATALAIA_SERVING_FORMAT"):
        served_base_path(ort)
    _write_manifest(expected)
    assert served_base_path(ort) == expected


def test_retrain_quantize_dispatches_ort_methods(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import atalaia.models.ortgenai as ortgenai
    from retrain.quantize import quantize_model

    calls: list[tuple[Path, Path, str]] = []

    def fake_export(src: Path, out: Path, *, precision: str) -> dict[str, object]:
        calls.append((src, out, precision))
        _write_manifest(out, precision=precision)
        return {}

    monkeypatch.setattr(ortgenai, "export_ort", fake_export)
    result = quantize_model(tmp_path / "merged", tmp_path / "out", method="ort-int8")
    assert calls == [(tmp_path / "merged", tmp_path / "out", "int8")]
    assert result.method == "ort-int8" and result.path == tmp_path / "out" and result.size_bytes > 0
    assert is_ort_dir(result.path)
