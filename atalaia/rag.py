"""Retrieval over the regulations handbook: chunking, a cached embedding index and the RAG prompt.

The regulations assistant answers from passages of ``data/regulations/`` rather than from what
SmolLM2-135M remembers: the handbook's numbers (amounts, deadlines) were chosen so that no base
model knows them. This module

- splits each section into passages of whole clauses (:func:`chunk_regulations`);
- embeds them with all-MiniLM-L6-v2 into a :class:`RetrievalIndex` searched by cosine similarity,
  cached on disk under a content hash (:func:`load_or_build`);
- turns a question and its passages into chat messages for the generator (:func:`build_prompt`);
- measures retrieval with :func:`hit_rate_at_k` on the QA set.

The index is small (44 sections, a few hundred passages of 384 floats), so brute-force search over
a dense matrix is both exact and faster than any approximate index would be.

Examples
--------
>>> import tempfile
>>> folder = Path(tempfile.mkdtemp())
>>> _ = (folder / "01-leave.md").write_text(
...     "# Leave\\n\\nSection id: leave\\n\\n1.1 Employees get 30 days.\\n\\n1.2 Ask your manager.\\n"
... )
>>> [p.id for p in chunk_regulations(folder)]
['leave#1']
>>> index = RetrievalIndex.build(chunk_regulations(folder), HashingEmbedder(dim=32))
>>> [(p.section, round(score, 2)) for p, score in index.search("How many days of leave?", k=1)]
[('leave', 0.48)]
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import tempfile
import threading
import time
import zipfile
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

logger = logging.getLogger(__name__)

#: Default passage size in words. all-MiniLM-L6-v2 is used with 128-token inputs (see
#: ``atalaia.metrics.embedding.Embedder``), about 90-100 words of this text, so the tail of the
#: longest passages is not embedded (it still reaches the generator). Measured on the QA set
#: (300 questions), 90 words gives hit@1 0.85 / hit@3 0.93 and 120 gives 0.82 / 0.94: the same at
#: k=3, and 120 gives the generator more context per passage.
DEFAULT_MAX_WORDS = 120
#: Passages retrieved per question by default. Three keeps the prompt short for SmolLM2.
DEFAULT_K = 3
#: Bumped whenever chunking or the cache layout changes, so that old caches are never reused.
INDEX_FORMAT = 1
#: Query embeddings kept per index: encoding a question costs about 10 ms on a CPU, searching
#: 0.02 ms, and employees (and the traffic simulator) ask the same questions again and again.
QUERY_CACHE_SIZE = 1024
#: Embedder name recorded in the cache key when the embedder does not say its own.
DEFAULT_EMBEDDER_NAME = "all-MiniLM-L6-v2"

DEFAULT_SYSTEM = (
    "You are the regulations assistant of Atalaia Systems. Answer the employee's question using only "
    "the handbook passages below. Quote exact numbers, deadlines and form codes from them. If the "
    "passages do not answer the question, say that you do not know and suggest asking HR. "
    "Answer in one or two sentences."
)

# A section file is named NN-slug.md; README.md and other notes in the folder are not sections.
_SECTION_FILE = re.compile(r"^\d+-[\w-]+\.md$")
_TITLE = re.compile(r"^#\s+(?P<title>.+?)\s*$")
_SECTION_ID = re.compile(r"^Section id:\s*(?P<slug>\S+)\s*$")
# A clause starts a line with its number, e.g. "13.2 An expense report ..."; following lines that
# do not start a new clause (bullet lists) belong to it.
_CLAUSE_START = re.compile(r"^\d+\.\d+\s")


class RegulationsError(ValueError):
    """The regulations folder or one of its files is not in the expected format."""


@dataclass(frozen=True)
class Passage:
    """A retrievable piece of one handbook section: consecutive whole clauses.

    Attributes
    ----------
    id
        ``"<section>#<n>"``, ``n`` counting the section's passages from 1, e.g. ``"expense-reports#3"``.
    section
        The section's ``Section id`` (the slug the QA data refers to).
    title
        The section's title, e.g. ``"Expense Reports"``.
    text
        The title on its own line, then the clauses: the title tells the embedder the topic even
        when the clauses themselves never name it.
    """

    id: str
    section: str
    title: str
    text: str

    @property
    def body(self) -> str:
        """The clauses without the title line.

        >>> Passage("a#1", "a", "Leave", "Leave\\n1.1 Thirty days.").body
        '1.1 Thirty days.'
        """
        prefix = self.title + "\n"
        return self.text[len(prefix) :] if self.text.startswith(prefix) else self.text


@runtime_checkable
class TextEmbedder(Protocol):
    """What the index needs from an embedder (``atalaia.metrics.embedding.Embedder`` fits)."""

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embeddings of ``texts`` as an ``(n, d)`` array."""
        ...


class HashingEmbedder:
    """A tiny, model-free embedder: hashed bag of lower-cased words, unit-normalised.

    Meant for tests and doctests, where loading all-MiniLM-L6-v2 would cost seconds. Deterministic
    across processes (``hashlib``, not Python's salted ``hash``).

    >>> e = HashingEmbedder(dim=16)
    >>> v = e.encode(["Expense reports", "expense REPORTS!"])
    >>> v.shape, bool(np.allclose(v[0], v[1])), round(float(np.linalg.norm(v[0])), 3)
    ((2, 16), True, 1.0)
    """

    def __init__(self, dim: int = 64, name: str = "hashing") -> None:
        self.dim = dim
        self.name = f"{name}-{dim}"
        self.calls = 0  # number of encode calls, so that tests can see when the cache was used

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Hashed word counts of ``texts``, rows of norm 1 (zero rows for texts without words)."""
        self.calls += 1
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                out[
                    row, int.from_bytes(hashlib.blake2b(word.encode(), digest_size=4).digest(), "little") % self.dim
                ] += 1
        return _normalise(out)


def _normalise(matrix: np.ndarray) -> np.ndarray:
    """Rows scaled to norm 1 (zero rows stay zero), as a float32 copy.

    Rows already of norm 1 (what the real embedder returns) are left untouched, so that saving and
    loading an index gives back the very same bits rather than a re-rounded copy.
    """
    matrix = np.array(matrix, dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=-1, keepdims=True)
    if np.all((np.abs(norms - 1.0) <= 1e-5) | (norms == 0)):
        return matrix
    return np.divide(matrix, norms, out=np.zeros_like(matrix), where=norms > 0)


def embedder_name(embedder: Any) -> str:
    """A name for ``embedder`` to key the index cache with.

    Its ``name`` attribute if it has one; else, for an ``Embedder`` wrapping a SentenceTransformer,
    the model folder's last two path parts (a site-packages path names the machine, not the model)
    plus the dimension and the input length, since truncation changes the vectors.

    >>> embedder_name(HashingEmbedder(dim=8))
    'hashing-8'
    """
    name = getattr(embedder, "name", None)
    if isinstance(name, str) and name:
        return name
    model = getattr(embedder, "model", embedder)
    source = getattr(getattr(model, "tokenizer", None), "name_or_path", "") or DEFAULT_EMBEDDER_NAME
    short = "/".join(Path(str(source)).parts[-2:])
    return f"{short}|dim={getattr(embedder, 'dim', '?')}|max_seq={getattr(model, 'max_seq_length', '?')}"


# --------------------------------------------------------------------------------------------------
# Chunking


def _section_files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        raise RegulationsError(f"regulations folder {directory} does not exist")
    files = sorted(p for p in directory.iterdir() if p.is_file() and _SECTION_FILE.match(p.name))
    if not files:
        raise RegulationsError(f"no section files (NN-slug.md) in {directory}")
    return files


def _parse_section(path: Path) -> tuple[str, str, list[str]]:
    """``(slug, title, clauses)`` of one section file; each clause keeps its bullet lines."""
    title = slug = None
    clauses: list[list[str]] = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.rstrip()
        if not line:
            continue
        if title is None and (m := _TITLE.match(line)):
            title = m["title"]
        elif slug is None and (m := _SECTION_ID.match(line)):
            slug = m["slug"]
        elif _CLAUSE_START.match(line):
            clauses.append([line])
        elif clauses:
            clauses[-1].append(line)
        else:
            # Text between the header and the first clause: keep it searchable as a clause of its own.
            clauses.append([line])
    if slug is None:
        raise RegulationsError(f"{path} has no 'Section id: <slug>' line")
    if title is None:
        raise RegulationsError(f"{path} has no '# Title' line")
    if not clauses:
        raise RegulationsError(f"{path} has no clauses")
    return slug, title, ["\n".join(c) for c in clauses]


def _pack(clauses: Sequence[str], max_words: int) -> list[list[str]]:
    """Group consecutive clauses into as few groups as fit ``max_words``, with sizes as even as possible.

    Greedy packing alone leaves a short last group (a 130-word section at 120 words per passage
    becomes 120 + 10, and a 10-word passage carries too little context to be found). Here the
    number of groups is the smallest that fits, and among those splits the one with the smallest
    largest group wins (a small dynamic programme: sections have about ten clauses). A clause
    longer than ``max_words`` is a group of its own, never split.

    >>> _pack(["a b c d e", "f g h", "i", "j"], max_words=8)
    [['a b c d e'], ['f g h', 'i', 'j']]
    >>> _pack(["a b", "c d", "e f", "g h", "i j"], max_words=8)
    [['a b', 'c d', 'e f'], ['g h', 'i j']]
    >>> _pack(["one two three", "four"], max_words=1)
    [['one two three'], ['four']]
    """
    words = [len(c.split()) for c in clauses]
    n = len(words)
    prefix = [0]
    for w in words:
        prefix.append(prefix[-1] + w)

    def fits(i: int, j: int) -> bool:  # clauses[i:j] may form one group
        return j - i == 1 or prefix[j] - prefix[i] <= max_words

    # best[j] = (groups, largest group) of the best split of clauses[:j]; cut[j] = start of its last group.
    inf = (n + 1, math.inf)
    best: list[tuple[int, float]] = [(0, 0.0)] + [inf] * n
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(j - 1, -1, -1):
            if not fits(i, j):
                break  # groups only grow as i decreases
            cand = (best[i][0] + 1, max(best[i][1], prefix[j] - prefix[i]))
            if cand < best[j]:
                best[j], cut[j] = cand, i
    groups: list[list[str]] = []
    j = n
    while j > 0:
        groups.append(list(clauses[cut[j] : j]))
        j = cut[j]
    return groups[::-1]


def chunk_regulations(directory: Path, max_words: int = DEFAULT_MAX_WORDS) -> list[Passage]:
    """Split every section of the handbook into passages of whole, consecutive clauses.

    Parameters
    ----------
    directory
        Folder of ``NN-slug.md`` section files (other files, such as ``README.md``, are ignored).
    max_words
        Largest passage, in words of clause text (the title prefix is not counted). A clause
        longer than this is a passage of its own: clauses are never split.

    Returns
    -------
    list[Passage]
        In file order, then clause order. Ids are ``"<section>#<n>"`` with ``n`` from 1: the same
        files and ``max_words`` always give the same ids.

    Raises
    ------
    RegulationsError
        When the folder has no section files, a file lacks its title, ``Section id:`` line or
        clauses, or two files share a section id.
    """
    if max_words < 1:
        raise ValueError(f"max_words must be at least 1, got {max_words}")
    passages: list[Passage] = []
    seen: dict[str, Path] = {}
    for path in _section_files(Path(directory)):
        slug, title, clauses = _parse_section(path)
        if slug in seen:
            raise RegulationsError(f"section id {slug!r} is used by both {seen[slug]} and {path}")
        seen[slug] = path
        for i, group in enumerate(_pack(clauses, max_words), start=1):
            passages.append(Passage(id=f"{slug}#{i}", section=slug, title=title, text=title + "\n" + "\n".join(group)))
    return passages


def regulations_digest(directory: Path, max_words: int, embedder: str) -> str:
    """SHA-256 of everything an index depends on: section files (names and bytes), chunking, embedder."""
    h = hashlib.sha256()
    h.update(f"format={INDEX_FORMAT}\nmax_words={max_words}\nembedder={embedder}\n".encode())
    for path in _section_files(Path(directory)):
        data = path.read_bytes()
        # Length-prefixed so that moving text from one file to the next changes the digest.
        h.update(f"{path.name}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------------
# Index


class RetrievalIndex:
    """Passages and their unit-normalised embeddings, searched by cosine similarity.

    Parameters
    ----------
    passages
        The passages, one per row of ``embeddings``.
    embeddings
        ``(len(passages), d)`` float32 array; rows are normalised here, so any embedder works.
    embedder
        Used to encode string queries; may be ``None`` when every query is given as a vector.
    meta
        Free-form JSON-serialisable metadata saved with the index (cache key, embedder name, …).
    query_cache_size
        Embeddings of the most recent string queries of :meth:`search` kept in memory; 0 disables.
    """

    def __init__(
        self,
        passages: Sequence[Passage],
        embeddings: np.ndarray,
        embedder: TextEmbedder | None = None,
        meta: Mapping[str, Any] | None = None,
        query_cache_size: int = QUERY_CACHE_SIZE,
    ) -> None:
        embeddings = np.asarray(embeddings)
        if embeddings.ndim != 2 or embeddings.shape[0] != len(passages):
            raise ValueError(f"need one embedding row per passage: {len(passages)} passages, shape {embeddings.shape}")
        self.passages: list[Passage] = list(passages)
        self.embeddings: np.ndarray = _normalise(embeddings)
        self.embedder = embedder
        self.meta: dict[str, Any] = dict(meta or {})
        self.query_cache_size = query_cache_size
        self._query_cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._query_lock = threading.Lock()  # the service searches from several threads

    def __len__(self) -> int:
        return len(self.passages)

    def __repr__(self) -> str:
        return f"RetrievalIndex({len(self)} passages, dim={self.dim})"

    @property
    def dim(self) -> int:
        """Embedding dimension."""
        return int(self.embeddings.shape[1])

    @classmethod
    def build(
        cls, passages: Sequence[Passage], embedder: TextEmbedder, meta: Mapping[str, Any] | None = None
    ) -> RetrievalIndex:
        """Embed ``passages`` in one ``encode`` call (the embedder batches internally)."""
        if not passages:
            raise ValueError("cannot build an index without passages")
        t0 = time.perf_counter()
        embeddings = embedder.encode([p.text for p in passages])
        logger.info("embedded %d passages in %.2f s", len(passages), time.perf_counter() - t0)
        return cls(passages, embeddings, embedder=embedder, meta=meta)

    def save(self, path: Path) -> Path:
        """Write the index to one ``.npz`` file, atomically, loadable without pickle.

        The array ``embeddings`` holds the vectors; the 0-d string array ``meta`` holds JSON with
        the passages and :attr:`meta`. One file written through a temporary name and
        :func:`os.replace` means a reader never sees half an index, even with concurrent builders.

        Returns
        -------
        Path
            ``path`` (``np.savez`` would add ``.npz`` to a name without it; here the name is kept).
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        doc = {"format": INDEX_FORMAT, "meta": self.meta, "passages": [asdict(p) for p in self.passages]}
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, embeddings=self.embeddings, meta=np.array(json.dumps(doc, ensure_ascii=False)))
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, path: Path, embedder: TextEmbedder | None = None) -> RetrievalIndex:
        """Read an index written by :meth:`save`; ``embedder`` is needed to search with strings.

        Raises
        ------
        ValueError
            When the file is not an index of this format (or is corrupt).
        """
        try:
            with np.load(Path(path), allow_pickle=False) as data:
                embeddings = np.array(data["embeddings"], dtype=np.float32)
                doc = json.loads(str(data["meta"]))
            if doc.get("format") != INDEX_FORMAT:
                raise ValueError(f"index format {doc.get('format')}, expected {INDEX_FORMAT}")
            passages = [Passage(**p) for p in doc["passages"]]
        # Everything a truncated, foreign or older file can raise, as one error the caller can handle.
        except (OSError, KeyError, ValueError, TypeError, AttributeError, zipfile.BadZipFile) as exc:
            raise ValueError(f"{path} is not a readable retrieval index: {exc}") from exc
        return cls(passages, embeddings, embedder=embedder, meta=doc.get("meta"))

    def _query_vectors(self, queries: Sequence[str] | np.ndarray) -> np.ndarray:
        if isinstance(queries, np.ndarray):
            vectors = np.atleast_2d(queries)
        else:
            if self.embedder is None:
                raise ValueError("this index has no embedder: pass query vectors, or load it with an embedder")
            vectors = self.embedder.encode(list(queries))
        if vectors.shape[-1] != self.dim:
            raise ValueError(f"query vectors have {vectors.shape[-1]} dimensions, the index has {self.dim}")
        return _normalise(vectors)

    def search_many(self, queries: Sequence[str] | np.ndarray, k: int = DEFAULT_K) -> list[list[tuple[Passage, float]]]:
        """Top-``k`` passages of each query, best first, with their cosine similarity.

        Parameters
        ----------
        queries
            Strings (encoded in one batch) or an ``(n, d)`` array of query vectors.
        k
            Passages per query (fewer when the index is smaller).

        Returns
        -------
        list[list[tuple[Passage, float]]]
            One list per query. Ties keep index order, so results are deterministic.
        """
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        if not isinstance(queries, np.ndarray) and len(queries) == 0:
            return []
        scores = self._query_vectors(queries) @ self.embeddings.T  # (n, passages): cosine, rows are unit
        k = min(k, len(self))
        # A stable sort of a few hundred scores is microseconds; argpartition would buy nothing here.
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return [[(self.passages[j], float(row[j])) for j in idx] for row, idx in zip(scores, order, strict=True)]

    def search(self, query: str | np.ndarray, k: int = DEFAULT_K) -> list[tuple[Passage, float]]:
        """Top-``k`` passages for one query (a string or a ``(d,)`` vector), best first.

        A string's embedding is kept in a small LRU cache (see ``query_cache_size``).
        """
        if not isinstance(query, str):
            return self.search_many(np.asarray(query).reshape(1, -1), k)[0]
        if self.query_cache_size <= 0:
            return self.search_many([query], k)[0]
        with self._query_lock:
            vector = self._query_cache.get(query)
            if vector is not None:
                self._query_cache.move_to_end(query)
        if vector is None:
            vector = self._query_vectors([query])[0]  # encoded outside the lock: it is the slow part
            with self._query_lock:
                self._query_cache[query] = vector
                while len(self._query_cache) > self.query_cache_size:
                    self._query_cache.popitem(last=False)
        return self.search_many(vector.reshape(1, -1), k)[0]


def load_or_build(
    directory: Path,
    embedder: TextEmbedder,
    cache_dir: Path,
    max_words: int = DEFAULT_MAX_WORDS,
    name: str | None = None,
) -> RetrievalIndex:
    """The index of ``directory``, from ``cache_dir`` when nothing it depends on changed.

    The cache file is named by :func:`regulations_digest` (section files, ``max_words``, embedder
    name and index format), so an edited section, a different chunking or another embedder gets a
    new file and an unchanged handbook loads without encoding anything. Stale files are left in
    place (they are small); delete ``cache_dir`` to drop them.

    Parameters
    ----------
    directory
        Folder of section files.
    embedder
        Encodes passages on a cache miss and queries afterwards.
    cache_dir
        Folder of cached indexes (created when missing).
    max_words
        Passage size, see :func:`chunk_regulations`.
    name
        Embedder name for the cache key; by default :func:`embedder_name`.
    """
    name = name or embedder_name(embedder)
    digest = regulations_digest(directory, max_words, name)
    path = Path(cache_dir) / f"rag-index-{digest[:24]}.npz"
    if path.exists():
        try:
            index = RetrievalIndex.load(path, embedder=embedder)
            if index.meta.get("digest") == digest:
                return index
            logger.warning("retrieval cache %s has another digest; rebuilding", path)
        except ValueError as exc:  # a corrupt or foreign file must not stop the service: rebuild it
            logger.warning("retrieval cache %s unreadable (%s); rebuilding", path, exc)
    passages = chunk_regulations(directory, max_words=max_words)
    meta = {"digest": digest, "embedder": name, "max_words": max_words, "source": str(directory)}
    index = RetrievalIndex.build(passages, embedder, meta=meta)
    index.save(path)
    logger.info("retrieval index of %d passages saved to %s", len(index), path)
    return index


# --------------------------------------------------------------------------------------------------
# Prompt and evaluation


def build_prompt(question: str, passages: Sequence[Passage], system: str = DEFAULT_SYSTEM) -> list[dict[str, str]]:
    """Chat messages for the generator: the passages in the system message, then the question.

    Each passage is labelled with its section title and id and given without the title line that
    was only there for retrieval: SmolLM2-135M follows short prompts best, so nothing is repeated.

    >>> msgs = build_prompt("How long?", [Passage("leave#1", "leave", "Leave", "Leave\\n1.1 Thirty days.")], "Answer.")
    >>> [m["role"] for m in msgs]
    ['system', 'user']
    >>> print(msgs[0]["content"])
    Answer.
    <BLANKLINE>
    [Leave (leave#1)]
    1.1 Thirty days.
    >>> msgs[1]["content"]
    'How long?'
    """
    blocks = [f"[{p.title} ({p.id})]\n{p.body}" for p in passages]
    content = system.strip()
    if blocks:
        content += "\n\n" + "\n\n".join(blocks)
    return [{"role": "system", "content": content}, {"role": "user", "content": question.strip()}]


def hit_rate_at_k(
    index: RetrievalIndex, qa_items: Iterable[Mapping[str, Any]], ks: Sequence[int] = (1, 3, 5)
) -> dict[int, float]:
    """Share of questions whose gold ``section`` is among the sections of the top-``k`` passages.

    All questions are searched in one batch, once, at the largest ``k``.

    >>> folder = Path(tempfile.mkdtemp())
    >>> for i, (slug, text) in enumerate([("leave", "vacation days holiday"), ("cards", "corporate card limit")]):
    ...     _ = (folder / f"0{i}-{slug}.md").write_text(f"# {slug}\\nSection id: {slug}\\n1.1 {text}\\n")
    >>> index = RetrievalIndex.build(chunk_regulations(folder), HashingEmbedder())
    >>> hit_rate_at_k(index, [{"question": "vacation days?", "section": "leave"},
    ...                       {"question": "holiday?", "section": "cards"}], ks=(1, 2))
    {1: 0.5, 2: 1.0}
    """
    items = list(qa_items)
    ks = sorted(set(ks))
    if not items:
        return {k: math.nan for k in ks}
    results = index.search_many([str(item["question"]) for item in items], k=max(ks))
    hits = {k: 0 for k in ks}
    for item, found in zip(items, results, strict=True):
        sections = [p.section for p, _ in found]
        for k in ks:
            hits[k] += item["section"] in sections[:k]
    return {k: hits[k] / len(items) for k in ks}
