"""A response cache for chat completions: exact matches first, then semantic near-matches.

An *exact* hit needs the same model version, the same conversation (role and content, with runs of
whitespace collapsed) and the same answer-changing generation parameters (``max_tokens``,
``temperature``, ``top_p``, ``stop``). A *semantic* hit reuses the answer of an earlier request
whose last user message is close in meaning (cosine similarity of unit-norm embeddings at least
``semantic_threshold``), but only among entries with the same model version, the same generation
parameters *and the same conversation apart from that last user message* (system prompt, earlier
turns): the same question asked under a different system prompt or retrieved context may deserve a
different answer, so it must not be served a cached one.

Only deterministic requests (``temperature == 0``) are cached: a sampled answer is one draw of
many, and replaying it would silently remove the variety the caller asked for.

Examples
--------
>>> import numpy as np
>>> now = [0.0]
>>> cache = ResponseCache(max_entries=2, ttl_s=60.0, semantic_threshold=0.9, clock=lambda: now[0])
>>> params = {"temperature": 0.0, "max_tokens": 64}
>>> key = KeyParts.from_request("m@1", [{"role": "user", "content": "How many  vacation days?"}], params)
>>> cache.put(key, "30 days.", embedding=np.array([1.0, 0.0]))
True
>>> same = KeyParts.from_request("m@1", [{"role": "user", "content": " How many vacation days? "}], params)
>>> hit = cache.get(same)
>>> hit.value, hit.kind, hit.similarity
('30 days.', 'exact', 1.0)
>>> other = KeyParts.from_request("m@1", [{"role": "user", "content": "Vacation days: how many?"}], params)
>>> hit = cache.get(other, embedding=np.array([0.96, 0.28]))
>>> hit.kind, round(hit.similarity, 2)
('semantic', 0.96)
>>> cache.get(other, embedding=np.array([0.0, 1.0])) is None
True
>>> now[0] = 61.0  # past the TTL: the entry is gone
>>> cache.get(same) is None
True
>>> s = cache.stats
>>> (s.hits_exact, s.hits_semantic, s.misses, s.expirations, s.size)
(1, 1, 2, 1, 0)
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import time
import unicodedata
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

__all__ = ["CacheHit", "CacheStats", "KeyParts", "ResponseCache", "cacheable", "normalise_text"]

# Bumped whenever the canonical form of a key changes, so old and new keys can never collide.
_KEY_FORMAT = "atalaia-cache-v1"
# Float32 dot products of unit vectors are off by ~1e-7; without slack an identical embedding could
# miss a threshold of 1.0, and a similarity printed as 0.95 could miss a threshold of 0.95.
_SIMILARITY_SLACK = 1e-6
_INITIAL_ROWS = 64


def normalise_text(text: str) -> str:
    """Canonical form of a message for keying: NFC, runs of whitespace collapsed to one space, stripped.

    Case and punctuation are kept: they can change the answer ("US" vs "us").

    Examples
    --------
    >>> normalise_text("  How many\\n\\tvacation   days? ")
    'How many vacation days?'
    """
    return " ".join(unicodedata.normalize("NFC", text).split())


def cacheable(params: Mapping[str, Any]) -> bool:
    """Whether a request with these generation parameters may be cached (is deterministic).

    A request is deterministic when ``temperature`` is given and is 0 (greedy decoding) and at most one
    choice is asked for. A missing ``temperature`` is *not* cacheable: the OpenAI default is 1.0, so an
    absent value says nothing about determinism.

    Examples
    --------
    >>> cacheable({"temperature": 0.0, "top_p": 0.9})
    True
    >>> cacheable({"temperature": 0.7})
    False
    >>> cacheable({})
    False
    >>> cacheable({"temperature": 0, "n": 3})
    False
    """
    temperature = params.get("temperature")
    if temperature is None or isinstance(temperature, bool):
        return False
    try:
        if float(temperature) != 0.0:
            return False
    except (TypeError, ValueError):
        return False
    n = params.get("n")
    return n is None or n == 1


def _role_content(message: Any) -> tuple[str, str]:
    if isinstance(message, Mapping):
        role, content = message.get("role"), message.get("content")
    else:  # pydantic models (inference.schemas.Message, atalaia.events.ChatMessage) and the like
        role, content = getattr(message, "role", None), getattr(message, "content", None)
    if isinstance(content, str):
        text = normalise_text(content)
    else:
        # Structured content (OpenAI content parts): key on its canonical JSON, untouched.
        text = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return str(role), text


def _stop_tuple(stop: Any) -> tuple[str, ...]:
    # Generation halts at the first occurrence of any stop string, so their order and repeats do not
    # change the answer: a sorted set makes ["a", "b"] and ["b", "a", "a"] the same key.
    if stop is None or stop == "":
        return ()
    if isinstance(stop, str):
        return (stop,)
    return tuple(sorted({str(s) for s in stop if s != ""}))


def _number(value: Any, default: float | None) -> float | None:
    if value is None:
        return default
    # 0 and 0.0, 1 and 1.0 must key the same; JSON would spell them differently.
    return float(value)


def _digest(payload: Any) -> bytes:
    raw = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return hashlib.blake2b(raw, digest_size=16).digest()


@dataclass(frozen=True, slots=True)
class KeyParts:
    """The cache key of one request, already normalised and hashed.

    Build it with :meth:`from_request`; the hashes are stable across processes and restarts
    (BLAKE2b of canonical JSON, never Python's salted :func:`hash`).

    Attributes
    ----------
    model_version
        The version of the model that answers; never shared across versions.
    key
        Hex digest of everything that makes an exact match.
    scope
        Hex digest of everything a semantic match must share: model version, generation parameters
        and the conversation with the last user message left out.
    scope_id
        63 bits of ``scope`` as an int, compared in bulk by the semantic scan.
    deterministic
        :func:`cacheable` of the parameters; the cache stores and serves nothing else.
    """

    model_version: str
    key: str
    scope: str
    scope_id: int
    deterministic: bool

    @classmethod
    def from_request(
        cls, model_version: str, messages: Iterable[Any], params: Mapping[str, Any] | None = None
    ) -> KeyParts:
        """Key a chat request.

        Parameters
        ----------
        model_version
            The served model version (``Settings.model_version``), not the alias the client sent.
        messages
            Mappings with ``role`` and ``content``, or objects with those attributes.
        params
            Generation parameters. Only ``max_tokens`` (``max_completion_tokens`` wins when both are
            set, as in the service), ``temperature``, ``top_p`` (default 1.0) and ``stop`` are
            keyed; pass the *resolved* ``max_tokens``, so a changed server default is a new key.

        Examples
        --------
        >>> a = KeyParts.from_request("m@1", [{"role": "user", "content": "hi  there"}],
        ...     {"temperature": 0, "max_tokens": 8, "stop": ["b", "a"]})
        >>> b = KeyParts.from_request("m@1", [{"role": "user", "content": "hi there"}],
        ...     {"temperature": 0.0, "max_tokens": 8, "top_p": 1.0, "stop": ["a", "b", "a"]})
        >>> a == b
        True
        >>> a.key == KeyParts.from_request("m@2", [{"role": "user", "content": "hi there"}],
        ...     {"temperature": 0, "max_tokens": 8, "stop": ["a", "b"]}).key
        False
        """
        params = params or {}
        conversation = [_role_content(m) for m in messages]
        generation = {
            "max_tokens": params.get("max_completion_tokens") or params.get("max_tokens"),
            "temperature": _number(params.get("temperature"), None),
            "top_p": _number(params.get("top_p"), 1.0),
            "stop": list(_stop_tuple(params.get("stop"))),
        }
        key = _digest([_KEY_FORMAT, "exact", model_version, generation, conversation])
        # The semantic scope is the conversation with the last user message blanked: that message is
        # what the embedding stands for, everything else must match exactly.
        last_user = max((i for i, (role, _) in enumerate(conversation) if role == "user"), default=None)
        context = [(role, None if i == last_user else text) for i, (role, text) in enumerate(conversation)]
        scope = _digest([_KEY_FORMAT, "scope", model_version, generation, context])
        return cls(
            model_version=model_version,
            key=key.hex(),
            scope=scope.hex(),
            scope_id=int.from_bytes(scope[:8], "big") >> 1,  # 63 bits: fits a signed int64
            deterministic=cacheable(params),
        )


KeyLike = KeyParts | tuple[str, Iterable[Any], Mapping[str, Any]]


@dataclass(frozen=True, slots=True)
class CacheHit:
    """A cached answer.

    Attributes
    ----------
    value
        What was :meth:`ResponseCache.put`.
    kind
        ``"exact"`` or ``"semantic"``.
    similarity
        Cosine similarity of the embeddings; 1.0 for exact hits.
    age_s
        Seconds since the entry was stored.
    """

    value: Any
    kind: Literal["exact", "semantic"]
    similarity: float
    age_s: float


@dataclass(frozen=True, slots=True)
class CacheStats:
    """Counters since construction (``size``: entries held now)."""

    hits_exact: int
    hits_semantic: int
    misses: int
    evictions: int
    expirations: int
    size: int


@dataclass(slots=True)
class _Entry:
    value: Any
    born: float
    scope: str
    row: int | None  # row of the embedding matrix, None when stored without an embedding


class ResponseCache:
    """Thread-safe LRU cache of chat completions with a TTL and optional semantic matching.

    Parameters
    ----------
    max_entries
        Most entries held; beyond it the least recently used (read or written) is evicted.
    ttl_s
        Entries older than this are misses and are dropped when met.
    semantic_threshold
        Least cosine similarity of a semantic hit; ``None`` turns semantic matching off.
    clock
        Monotonic seconds; injectable for tests.

    Notes
    -----
    Embeddings live in one float32 matrix, one row per entry that has one, grown by doubling up to
    ``max_entries`` rows; a semantic lookup is one matrix-vector product over all rows with the
    rows of other scopes, expired or free masked out (about 0.1 ms for 1,024 x 384). The first
    embedding fixes the dimension until :meth:`clear`. One lock guards everything: every operation
    is short, so finer locking would cost more than it saves.
    """

    def __init__(
        self,
        max_entries: int = 1024,
        ttl_s: float = 600.0,
        semantic_threshold: float | None = 0.95,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, got {max_entries}")
        if not ttl_s > 0:
            raise ValueError(f"ttl_s must be positive, got {ttl_s}")
        if semantic_threshold is not None and not -1.0 <= semantic_threshold <= 1.0:
            raise ValueError(f"semantic_threshold must be in [-1, 1] or None, got {semantic_threshold}")
        self.max_entries = max_entries
        self.ttl_s = float(ttl_s)
        self.semantic_threshold = semantic_threshold
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        # Embedding rows, kept in sync with _entries; allocated on the first embedding (its size fixes dim).
        self._vectors: np.ndarray | None = None
        self._row_scope = np.zeros(0, dtype=np.int64)
        self._row_born = np.zeros(0, dtype=np.float64)
        self._row_live = np.zeros(0, dtype=bool)
        self._row_key: list[str | None] = []
        self._free_rows: list[int] = []
        self._rows_used = 0  # high-water mark: rows beyond it were never written
        self._hits_exact = self._hits_semantic = self._misses = self._evictions = self._expirations = 0

    # -- public API ---------------------------------------------------------------------------------

    def get(self, key_parts: KeyLike, embedding: np.ndarray | Sequence[float] | None = None) -> CacheHit | None:
        """Look a request up: an exact hit first, else the most similar entry of the same scope.

        Parameters
        ----------
        key_parts
            A :class:`KeyParts`, or ``(model_version, messages, params)`` to build one.
        embedding
            Embedding of the request's last user message, for semantic matching; normalised here,
            so any non-zero vector will do.

        Returns
        -------
        CacheHit or None
            ``None`` on a miss, and for non-deterministic requests (which are not counted as misses:
            they were never candidates).

        Raises
        ------
        ValueError
            If the embedding is zero or not finite, or its size differs from the stored ones.
        """
        key = _as_key(key_parts)
        if not key.deterministic:
            return None
        query = None
        if embedding is not None and self.semantic_threshold is not None:
            query = _unit(embedding)
        with self._lock:
            now = self._clock()
            entry = self._entries.get(key.key)
            if entry is not None:
                if now - entry.born < self.ttl_s:
                    self._entries.move_to_end(key.key)
                    self._hits_exact += 1
                    return CacheHit(entry.value, "exact", 1.0, now - entry.born)
                self._drop(key.key)
                self._expirations += 1
            if query is not None:
                hit = self._semantic(key, query, now)
                if hit is not None:
                    self._hits_semantic += 1
                    return hit
            self._misses += 1
            return None

    def put(self, key_parts: KeyLike, value: Any, embedding: np.ndarray | Sequence[float] | None = None) -> bool:
        """Store an answer; replaces any entry of the same key and makes it the most recently used.

        Parameters
        ----------
        key_parts
            A :class:`KeyParts`, or ``(model_version, messages, params)`` to build one.
        value
            The answer to cache (any object; it is handed back as is, so do not mutate it later).
        embedding
            Embedding of the last user message, making the entry findable by semantic lookups.

        Returns
        -------
        bool
            False when nothing was stored because the request is not deterministic.

        Raises
        ------
        ValueError
            If the embedding is zero or not finite, or its size differs from earlier embeddings.
        """
        key = _as_key(key_parts)
        if not key.deterministic:
            return False
        vector = _unit(embedding) if embedding is not None else None
        with self._lock:
            if vector is not None and self._vectors is not None:
                self._check_dim(vector)
            now = self._clock()
            if key.key in self._entries:
                self._drop(key.key)
            # Evict before inserting, so rows in use never exceed max_entries.
            while len(self._entries) >= self.max_entries:
                oldest_key, oldest = next(iter(self._entries.items()))
                self._drop(oldest_key)
                # An entry past its TTL was dead anyway: count it as expired, not as evicted.
                if now - oldest.born >= self.ttl_s:
                    self._expirations += 1
                else:
                    self._evictions += 1
            row = self._take_row(vector, key, now) if vector is not None else None
            self._entries[key.key] = _Entry(value, now, key.scope, row)
            return True

    def clear(self) -> int:
        """Remove every entry; returns how many there were. Counters are kept."""
        with self._lock:
            removed = len(self._entries)
            self._entries.clear()
            self._vectors = None
            self._row_scope = np.zeros(0, dtype=np.int64)
            self._row_born = np.zeros(0, dtype=np.float64)
            self._row_live = np.zeros(0, dtype=bool)
            self._row_key = []
            self._free_rows = []
            self._rows_used = 0
            return removed

    @property
    def stats(self) -> CacheStats:
        """A consistent snapshot of the counters."""
        with self._lock:
            return CacheStats(
                hits_exact=self._hits_exact,
                hits_semantic=self._hits_semantic,
                misses=self._misses,
                evictions=self._evictions,
                expirations=self._expirations,
                size=len(self._entries),
            )

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    # -- internals (caller holds the lock) ----------------------------------------------------------

    def _semantic(self, key: KeyParts, query: np.ndarray, now: float) -> CacheHit | None:
        if self._vectors is None or self._rows_used == 0 or self.semantic_threshold is None:
            return None
        self._check_dim(query)
        n = self._rows_used
        live = self._row_live[:n]
        expired = live & (now - self._row_born[:n] >= self.ttl_s)
        if expired.any():
            # Dropping them here keeps the scan honest and frees their rows without a sweeper thread.
            for row in np.flatnonzero(expired).tolist():
                row_key = self._row_key[row]
                if row_key is not None:
                    self._drop(row_key)
                    self._expirations += 1
            live = self._row_live[:n]
        candidates = live & (self._row_scope[:n] == key.scope_id)
        if not candidates.any():
            return None
        sims = self._vectors[:n] @ query
        sims = np.where(candidates, sims, -np.inf)
        best = int(np.argmax(sims))
        similarity = float(sims[best])
        if similarity < self.semantic_threshold - _SIMILARITY_SLACK:
            return None
        best_key = self._row_key[best]
        entry = self._entries.get(best_key) if best_key is not None else None
        # scope_id is 63 bits of the scope hash; compare the full hash so a collision cannot leak answers.
        if entry is None or entry.scope != key.scope:
            return None
        assert best_key is not None
        self._entries.move_to_end(best_key)
        return CacheHit(entry.value, "semantic", min(similarity, 1.0), now - entry.born)

    def _check_dim(self, vector: np.ndarray) -> None:
        assert self._vectors is not None
        if vector.shape[0] != self._vectors.shape[1]:
            raise ValueError(f"embedding has {vector.shape[0]} dimensions, the cache holds {self._vectors.shape[1]}")

    def _take_row(self, vector: np.ndarray, key: KeyParts, now: float) -> int:
        if self._vectors is None:
            rows = min(_INITIAL_ROWS, self.max_entries)
            self._vectors = np.zeros((rows, vector.shape[0]), dtype=np.float32)
            self._row_scope = np.zeros(rows, dtype=np.int64)
            self._row_born = np.zeros(rows, dtype=np.float64)
            self._row_live = np.zeros(rows, dtype=bool)
            self._row_key = [None] * rows
        if self._free_rows:
            row = self._free_rows.pop()
        else:
            if self._rows_used == self._vectors.shape[0]:
                self._grow()
            row = self._rows_used
            self._rows_used += 1
        self._vectors[row] = vector
        self._row_scope[row] = key.scope_id
        self._row_born[row] = now
        self._row_live[row] = True
        self._row_key[row] = key.key
        return row

    def _grow(self) -> None:
        assert self._vectors is not None
        old = self._vectors.shape[0]
        # Rows in use never exceed entries held, so max_entries rows always suffice.
        new = min(old * 2, self.max_entries)
        vectors = np.zeros((new, self._vectors.shape[1]), dtype=np.float32)
        vectors[:old] = self._vectors
        self._vectors = vectors
        self._row_scope = np.concatenate([self._row_scope, np.zeros(new - old, dtype=np.int64)])
        self._row_born = np.concatenate([self._row_born, np.zeros(new - old, dtype=np.float64)])
        self._row_live = np.concatenate([self._row_live, np.zeros(new - old, dtype=bool)])
        self._row_key.extend([None] * (new - old))

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key)
        if entry.row is not None:
            self._row_live[entry.row] = False
            self._row_key[entry.row] = None
            self._free_rows.append(entry.row)


def _as_key(key_parts: KeyLike) -> KeyParts:
    if isinstance(key_parts, KeyParts):
        return key_parts
    model_version, messages, params = key_parts
    return KeyParts.from_request(model_version, messages, params)


def _unit(embedding: np.ndarray | Sequence[float]) -> np.ndarray:
    vector = np.asarray(embedding, dtype=np.float32).reshape(-1)
    norm = float(np.linalg.norm(vector))
    if not math.isfinite(norm):
        raise ValueError("embedding has non-finite values")
    if norm == 0.0:
        raise ValueError("embedding is the zero vector; it has no direction to compare")
    # Callers promise unit norm, but normalising again is cheap and makes cosine = dot product hold
    # for embedders that do not normalise (or do so in float16).
    return vector / np.float32(norm)
