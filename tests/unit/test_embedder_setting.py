"""ATALAIA_EMBEDDER_MODEL: the embedder is a setting, and the vector dimension follows the model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from atalaia.metrics.embedding import Embedder
from atalaia.models.embedder import _resolve, load_embedder
from atalaia.settings import Settings


def test_multilingual_embedder_maps_a_translation_next_to_its_original(tmp_path: Path) -> None:
    embedder = Embedder(load_embedder(Settings(home=tmp_path, embedder_model="use-multilingual-v3")))
    assert embedder.dim == 512
    en, pt, other = embedder.encode(
        [
            "How many vacation days do I get per year?",
            "Quantos dias de férias tenho por ano?",
            "Quem pintou a Mona Lisa?",
        ]
    )
    assert en.dtype == np.float32 and np.linalg.norm(pt) == pytest.approx(1.0, abs=1e-3)
    assert float(en @ pt) > 0.7 > float(en @ other)


def test_a_local_folder_is_resolved_from_the_setting(tmp_path: Path) -> None:
    assert _resolve(Settings(home=tmp_path, embedder_model=str(tmp_path / "my-model"))) == tmp_path / "my-model"
    with pytest.raises(FileNotFoundError, match="my-model"):
        load_embedder(Settings(home=tmp_path, embedder_model=str(tmp_path / "my-model")))
