"""Sentence embeddings (all-MiniLM-L6-v2) and the similarity scores built on them."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two (n, d) arrays.

    >>> cosine_rows(np.array([[1.0, 0.0], [1.0, 1.0]]), np.array([[1.0, 0.0], [-1.0, -1.0]])).round(3).tolist()
    [1.0, -1.0]
    """
    num = np.einsum("ij,ij->i", a, b)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def max_similarity(query: np.ndarray, candidates: np.ndarray) -> float:
    """Highest cosine similarity of ``query`` (d,) to any row of ``candidates`` (k, d).

    >>> max_similarity(np.array([1.0, 0.0]), np.array([[0.0, 1.0], [0.6, 0.8]]))
    0.6
    """
    if len(candidates) == 0:
        raise ValueError("no candidates to compare with")
    q = query / (np.linalg.norm(query) or 1.0)
    c = candidates / np.maximum(np.linalg.norm(candidates, axis=1, keepdims=True), 1e-12)
    return float(np.max(c @ q))


class Embedder:
    """Encodes texts into unit-normalised float32 vectors, in batches.

    The fast tokenizer is not safe to share across threads mid-call, so encoding is serialised.
    """

    def __init__(self, model: Any, batch_size: int = 64, max_tokens: int = 128) -> None:
        self.model = model
        # all-MiniLM-L6-v2 was trained on 128-token inputs; longer ones cost more and add little.
        model.max_seq_length = min(int(getattr(model, "max_seq_length", max_tokens) or max_tokens), max_tokens)
        self.batch_size = batch_size
        getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        self.dim = int(getter())
        self._lock = threading.Lock()

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embeddings of ``texts`` as an (n, dim) float32 array (rows of norm 1)."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        with self._lock:
            out = self.model.encode(
                list(texts),
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.asarray(out, dtype=np.float32)
