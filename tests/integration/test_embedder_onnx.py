"""The ONNX Runtime embedder against sentence-transformers' torch float32 on the project's own texts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from atalaia.metrics.embedding import Embedder
from atalaia.models.embedder import load_embedder
from atalaia.models.embedder_onnx import OnnxEmbedder, chosen_backend, export_embedder_onnx, onnx_dir
from atalaia.models.prepare import locate_embedder, read_manifest
from atalaia.settings import Settings

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def _qa_texts() -> list[str]:
    texts: list[str] = []
    for name in ("train.jsonl", "holdout.jsonl", "off_topic.jsonl"):
        for line in (REPO / "data" / "qa" / name).read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                texts += [row[k] for k in ("question", "answer") if row.get(k)]
    return texts


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("onnx-home")
    export_embedder_onnx(locate_embedder(), onnx_dir(Settings(home=home)))
    return home


def test_onnx_vectors_match_torch_on_the_qa_questions_and_answers(home: Path) -> None:
    texts = _qa_texts()
    assert len(texts) > 500
    assert chosen_backend(Settings(home=home)) == "onnx"  # auto: the export exists
    torch_vectors = Embedder(load_embedder(Settings(home=home, embedder_backend="torch"))).encode(texts)
    onnx = Embedder(load_embedder(Settings(home=home)))
    assert isinstance(onnx.model, OnnxEmbedder) and onnx.dim == 384
    vectors = onnx.encode(texts)
    assert vectors.dtype == np.float32 and vectors.shape == torch_vectors.shape
    cosine = np.einsum("ij,ij->i", vectors, torch_vectors)
    assert float(cosine.min()) >= 0.99
    # Order within a batch does not matter (texts are sorted by length inside encode).
    assert np.allclose(onnx.encode(texts[::-1])[::-1], vectors, atol=1e-5)
    manifest = read_manifest(onnx_dir(Settings(home=home)))
    assert manifest is not None and manifest["pooling"] == "mean" and manifest["dimension"] == 384


def test_int8_variant_loads_and_is_close(home: Path) -> None:
    texts = _qa_texts()[:64]
    torch_vectors = Embedder(load_embedder(Settings(home=home, embedder_backend="torch"))).encode(texts)
    int8 = Embedder(load_embedder(Settings(home=home, embedder_backend="onnx-int8"))).encode(texts)
    # Dynamic int8 is faster but looser: BENCHMARKS.md measures it below 0.99 on some texts.
    assert float(np.einsum("ij,ij->i", int8, torch_vectors).mean()) >= 0.98


def test_backend_setting_errors_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="ATALAIA_EMBEDDER_BACKEND=torch"):
        load_embedder(Settings(home=tmp_path, embedder_backend="onnx"))
    assert chosen_backend(Settings(home=tmp_path)) == "torch"  # auto without an export
    with pytest.raises(ValueError, match="ATALAIA_EMBEDDER_BACKEND"):
        chosen_backend(Settings(home=tmp_path, embedder_model=str(tmp_path), embedder_backend="onnx"))
