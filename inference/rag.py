"""Retrieval over the regulations: the code lives in the kernel, :mod:`atalaia.rag`.

The index, chunking and prompt building are pure functions that the inference service and the
retraining evaluation (``retrain/``) both need; services may import only the kernel, so they were
moved there. This module keeps the old import path working.
"""

from __future__ import annotations

from atalaia.qa import read_qa
from atalaia.rag import (
    DEFAULT_EMBEDDER_NAME,
    DEFAULT_K,
    DEFAULT_MAX_WORDS,
    DEFAULT_SYSTEM,
    INDEX_FORMAT,
    QUERY_CACHE_SIZE,
    HashingEmbedder,
    Passage,
    RegulationsError,
    RetrievalIndex,
    TextEmbedder,
    build_prompt,
    chunk_regulations,
    embedder_name,
    hit_rate_at_k,
    load_or_build,
    regulations_digest,
)

__all__ = [
    "DEFAULT_EMBEDDER_NAME",
    "DEFAULT_K",
    "DEFAULT_MAX_WORDS",
    "DEFAULT_SYSTEM",
    "INDEX_FORMAT",
    "QUERY_CACHE_SIZE",
    "HashingEmbedder",
    "Passage",
    "RegulationsError",
    "RetrievalIndex",
    "TextEmbedder",
    "build_prompt",
    "chunk_regulations",
    "embedder_name",
    "hit_rate_at_k",
    "load_or_build",
    "read_qa",
    "regulations_digest",
]
