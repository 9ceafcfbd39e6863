from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest

from inference.cache import CacheHit, KeyParts, ResponseCache, cacheable

PARAMS: dict[str, Any] = {"temperature": 0.0, "max_tokens": 64, "top_p": 1.0, "stop": None}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def key(text: str, model: str = "m@1", system: str | None = None, **params: Any) -> KeyParts:
    messages = [{"role": "system", "content": system}] if system is not None else []
    messages.append({"role": "user", "content": text})
    return KeyParts.from_request(model, messages, {**PARAMS, **params})


def unit(*values: float) -> np.ndarray:
    v = np.array(values, dtype=np.float64)
    return v / np.linalg.norm(v)


def at_cos(cos: float, dim: int = 8) -> np.ndarray:
    """A unit vector whose cosine with ``E0`` is ``cos``."""
    v = np.zeros(dim)
    v[0], v[1] = cos, np.sqrt(1 - cos**2)
    return v


E0 = unit(1, 0, 0, 0, 0, 0, 0, 0)


def test_exact_hit_ignores_whitespace_and_stop_order() -> None:
    cache = ResponseCache(clock=FakeClock())
    assert cache.put(key("How many  vacation\n days?", stop=["b", "a"]), "30 days.")
    hit = cache.get(key(" How many vacation days? ", stop=["a", "b"]))
    assert hit == CacheHit("30 days.", "exact", 1.0, 0.0)
    assert cache.get(key("how many vacation days?", stop=["a", "b"])) is None  # case matters


def test_messages_may_be_objects_or_mappings_and_tuple_keys_work() -> None:
    from atalaia.events import ChatMessage

    cache = ResponseCache(clock=FakeClock())
    cache.put(("m@1", [ChatMessage(role="user", content="hi")], PARAMS), "hello")
    hit = cache.get(key("hi"))
    assert hit is not None and hit.value == "hello"


def test_max_completion_tokens_takes_precedence_like_the_service() -> None:
    a = KeyParts.from_request("m", [{"role": "user", "content": "x"}], {"temperature": 0, "max_tokens": 9})
    b = KeyParts.from_request(
        "m", [{"role": "user", "content": "x"}], {"temperature": 0, "max_tokens": 5, "max_completion_tokens": 9}
    )
    assert a.key == b.key


def test_lru_evicts_least_recently_used() -> None:
    cache = ResponseCache(max_entries=3, clock=FakeClock())
    for name in "abc":
        cache.put(key(name), name)
    assert cache.get(key("a")) is not None  # a is now the most recent; b the least
    cache.put(key("d"), "d")
    assert cache.get(key("b")) is None
    assert [cache.get(key(n)) is not None for n in "acd"] == [True, True, True]
    cache.put(key("c"), "c2")  # a rewrite also refreshes: a is now the least recent
    cache.put(key("e"), "e")
    assert cache.get(key("a")) is None
    assert len(cache) == 3
    assert cache.stats.evictions == 2


def test_ttl_expiry_with_fake_clock() -> None:
    clock = FakeClock()
    cache = ResponseCache(ttl_s=10.0, clock=clock)
    cache.put(key("q"), "a", embedding=E0)
    clock.now += 9.5
    hit = cache.get(key("q"))
    assert hit is not None and hit.age_s == pytest.approx(9.5)
    clock.now += 0.5  # age == ttl: expired
    assert cache.get(key("q")) is None
    assert cache.get(key("other"), embedding=E0) is None  # dropped, so not found semantically either
    s = cache.stats
    assert (s.expirations, s.size, s.hits_exact, s.misses) == (1, 0, 1, 2)


def test_expired_entries_are_dropped_by_the_semantic_scan() -> None:
    clock = FakeClock()
    cache = ResponseCache(ttl_s=10.0, semantic_threshold=0.9, clock=clock)
    cache.put(key("old"), "old", embedding=E0)
    clock.now += 5
    cache.put(key("new"), "new", embedding=at_cos(0.95))
    clock.now += 6  # "old" expired, "new" alive
    hit = cache.get(key("query"), embedding=E0)
    assert hit is not None and hit.value == "new" and hit.kind == "semantic"
    assert cache.stats.expirations == 1 and len(cache) == 1


def test_exact_beats_semantic_and_semantic_picks_the_best() -> None:
    cache = ResponseCache(semantic_threshold=0.8, clock=FakeClock())
    cache.put(key("far"), "far", embedding=at_cos(0.85))
    cache.put(key("near"), "near", embedding=at_cos(0.99))
    cache.put(key("q"), "exact", embedding=at_cos(0.1))
    exact = cache.get(key("q"), embedding=E0)
    assert exact is not None and (exact.kind, exact.value) == ("exact", "exact")
    hit = cache.get(key("another question"), embedding=E0)
    assert hit is not None and (hit.kind, hit.value) == ("semantic", "near")
    assert hit.similarity == pytest.approx(0.99, abs=1e-6)
    assert cache.get(key("another question")) is None  # no embedding: exact only


def test_threshold_boundary() -> None:
    stored = at_cos(0.9)
    cache = ResponseCache(semantic_threshold=0.9, clock=FakeClock())
    cache.put(key("stored"), "v", embedding=stored)
    assert cache.get(key("q"), embedding=E0) is not None  # exactly at the threshold: a hit
    tighter = ResponseCache(semantic_threshold=0.9001, clock=FakeClock())
    tighter.put(key("stored"), "v", embedding=stored)
    assert tighter.get(key("q"), embedding=E0) is None
    identical = ResponseCache(semantic_threshold=1.0, clock=FakeClock())
    identical.put(key("stored"), "v", embedding=unit(0.3, 0.7, 0.1, 0.2))
    hit = identical.get(key("q"), embedding=unit(0.3, 0.7, 0.1, 0.2))
    assert hit is not None and hit.similarity <= 1.0  # float32 rounding must not lose it


def test_semantic_off_and_embeddings_normalised() -> None:
    off = ResponseCache(semantic_threshold=None, clock=FakeClock())
    off.put(key("stored"), "v", embedding=E0)
    assert off.get(key("q"), embedding=E0) is None
    cache = ResponseCache(semantic_threshold=0.99, clock=FakeClock())
    cache.put(key("stored"), "v", embedding=E0 * 7.0)
    assert cache.get(key("q"), embedding=E0 * 0.1) is not None


def test_different_model_version_params_or_context_never_match() -> None:
    cache = ResponseCache(semantic_threshold=0.5, clock=FakeClock())
    cache.put(key("q", system="You are HR."), "v", embedding=E0)
    others = [
        key("q", model="m@2", system="You are HR."),
        key("q", system="You are HR.", max_tokens=65),
        key("q", system="You are HR.", top_p=0.9),
        key("q", system="You are HR.", stop=["\n"]),
        key("q", system="You are legal."),  # same question under another system prompt
        key("q"),
    ]
    for other in others:
        assert cache.get(other) is None
        assert cache.get(other, embedding=E0) is None
    assert cache.get(key("paraphrase", system="You are HR."), embedding=E0) is not None


def test_non_deterministic_requests_are_not_cached() -> None:
    assert cacheable({"temperature": 0})
    assert cacheable({"temperature": 0.0, "top_p": 0.5, "n": 1})
    assert not cacheable({"temperature": 0.2})
    assert not cacheable({})  # OpenAI's default temperature is 1
    assert not cacheable({"temperature": None})
    assert not cacheable({"temperature": 0, "n": 2})
    assert not cacheable({"temperature": "hot"})
    cache = ResponseCache(clock=FakeClock())
    hot = key("q", temperature=0.7)
    assert cache.put(hot, "v") is False
    assert cache.get(hot) is None
    assert len(cache) == 0 and cache.stats.misses == 0


def test_stats_and_clear() -> None:
    cache = ResponseCache(max_entries=2, semantic_threshold=0.9, clock=FakeClock())
    cache.put(key("a"), 1, embedding=E0)
    cache.put(key("b"), 2)
    cache.put(key("c"), 3)  # evicts a
    cache.get(key("b"))
    cache.get(key("zz"))
    cache.put(key("a"), 1, embedding=E0)  # evicts c
    cache.get(key("a2"), embedding=E0)
    s = cache.stats
    assert (s.hits_exact, s.hits_semantic, s.misses, s.evictions, s.expirations, s.size) == (1, 1, 1, 2, 0, 2)
    assert cache.clear() == 2
    assert cache.stats.size == 0 and cache.get(key("a2"), embedding=E0) is None
    cache.put(key("x"), "x", embedding=unit(1, 2))  # after clear a new dimension is fine
    assert cache.get(key("y"), embedding=unit(1, 2)) is not None


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        ResponseCache(max_entries=0)
    with pytest.raises(ValueError):
        ResponseCache(ttl_s=0)
    with pytest.raises(ValueError):
        ResponseCache(semantic_threshold=1.5)
    cache = ResponseCache(clock=FakeClock())
    cache.put(key("a"), 1, embedding=E0)
    with pytest.raises(ValueError, match="dimensions"):
        cache.put(key("b"), 1, embedding=unit(1, 1))
    with pytest.raises(ValueError, match="dimensions"):
        cache.get(key("b"), embedding=unit(1, 1))
    with pytest.raises(ValueError, match="zero"):
        cache.put(key("b"), 1, embedding=np.zeros(8))
    with pytest.raises(ValueError, match="finite"):
        cache.get(key("b"), embedding=np.full(8, np.nan))


def test_rows_are_reused_and_stay_in_sync_with_entries() -> None:
    rng = np.random.default_rng(0)
    cache = ResponseCache(max_entries=50, semantic_threshold=0.999, clock=FakeClock())
    vectors = {}
    for i in range(400):  # many evictions and rewrites: rows must be freed and reused
        name = f"q{i % 120}"
        vectors[name] = rng.standard_normal(16)
        cache.put(key(name), name, embedding=vectors[name])
    assert len(cache) == 50
    for name in [f"q{i % 120}" for i in range(350, 400)]:
        hit = cache.get(key("paraphrase"), embedding=vectors[name])
        assert hit is not None and hit.value == name
    assert cache._vectors is not None and cache._vectors.shape[0] <= 64


def test_thread_safety_smoke() -> None:
    cache = ResponseCache(max_entries=64, semantic_threshold=0.95)
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((32, 24))
    errors: list[Exception] = []

    def worker(seed: int) -> None:
        try:
            for i in range(300):
                j = (seed * 7 + i) % 32
                k = key(f"q{j}")
                if i % 3 == 0:
                    cache.put(k, f"v{j}", embedding=vectors[j])
                else:
                    hit = cache.get(k, embedding=vectors[j])
                    assert hit is None or hit.value == f"v{j}"
                if i % 97 == 0:
                    cache.clear()
        except Exception as exc:  # noqa: BLE001 -- surfaced below: errors in threads are otherwise lost
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    s = cache.stats
    assert s.size == len(cache) <= 64
    assert s.hits_exact + s.hits_semantic + s.misses == 4 * 200
