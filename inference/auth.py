"""API keys of the inference service: who is calling, and how fast they may call.

Keys are stored only as SHA-256 hashes, by name (the calling service or tenant):
``ATALAIA_API_KEYS`` (a JSON map ``{"name": "<sha256 hex>"}``) and ``ATALAIA_API_KEYS_FILE``
(the same JSON in a file, read again whenever it changes, so keys rotate without a restart:
add the new key, move the callers, remove the old one). Several keys may share a name.

When at least one key is configured, the protected routes (chat completions, feedback) need
``Authorization: Bearer <key>``: none gives 401, an unknown key 403. The key's name becomes the
``caller`` of the events the request emits. With ``ATALAIA_API_KEY_RATE_PER_S`` above 0, each
name gets a token bucket (``ATALAIA_API_KEY_BURST`` deep); an empty bucket gives 429 with
``Retry-After``. Without keys, every route stays open, as before.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import json
import logging
import math
import threading
import time
from pathlib import Path
from typing import Any

from atalaia.settings import Settings

log = logging.getLogger(__name__)

#: Routes that need a key once keys are configured.
PROTECTED = ("/v1/chat/completions", "/v1/feedback")
#: The caller (key name) of the request being served, for the events it emits.
current_caller: contextvars.ContextVar[str | None] = contextvars.ContextVar("atalaia_caller", default=None)


def hash_key(key: str) -> str:
    """The stored form of an API key.

    >>> hash_key("secret-key")[:16]
    '85dbe15d75ef9308'
    """
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class ApiKeys:
    """The configured key hashes (inline and file), re-reading the file when it changes."""

    def __init__(self, settings: Settings) -> None:
        self._inline = dict(settings.api_keys)
        self._file: Path | None = settings.api_keys_file
        self._stamp: tuple[float, int] | None = None
        self._by_hash: dict[str, str] = {}
        self._lock = threading.Lock()
        self._load()

    def _load(self) -> None:
        entries = dict(self._inline)
        stamp = None
        if self._file is not None:
            try:
                stat = self._file.stat()
                stamp = (stat.st_mtime, stat.st_size)
                if stamp == self._stamp:
                    return
                data = json.loads(self._file.read_text(encoding="utf-8") or "{}")
                if not isinstance(data, dict):
                    raise ValueError("expected a JSON object of name -> sha256 hex")
                entries |= {str(k): str(v) for k, v in data.items()}
            except (OSError, ValueError) as exc:
                # Keep the keys we had: a half-written file must not open or close the service.
                log.error("API key file unreadable; keeping the previous keys", extra={"error": str(exc)})
                return
        by_hash: dict[str, str] = {}
        for name, digests in entries.items():
            for digest in digests.split(",") if isinstance(digests, str) else digests:
                by_hash[digest.strip().lower().removeprefix("sha256:")] = name
        self._by_hash, self._stamp = by_hash, stamp
        log.info("API keys loaded", extra={"names": sorted(set(by_hash.values()))})

    @property
    def enabled(self) -> bool:
        """Whether any key is configured (then the protected routes need one)."""
        self.refresh()
        return bool(self._by_hash)

    def refresh(self) -> None:
        """Re-read the key file if it changed."""
        if self._file is not None:
            with self._lock:
                self._load()

    def caller(self, key: str) -> str | None:
        """The name of ``key``, or None if it is not configured (constant-time per stored hash)."""
        digest = hash_key(key)
        found = None
        for stored, name in self._by_hash.items():
            if hmac.compare_digest(stored, digest):
                found = name
        return found


class RateLimiter:
    """A token bucket per caller: ``rate`` requests per second, bursts of ``burst``."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, max(1, burst)
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, caller: str, now: float | None = None) -> float:
        """0 if a request may go now (and count it), else the seconds until it may.

        >>> limiter = RateLimiter(rate=1.0, burst=2)
        >>> [limiter.take("a", now=0.0) for _ in range(3)]
        [0.0, 0.0, 1.0]
        >>> limiter.take("a", now=1.0), limiter.take("b", now=1.0)
        (0.0, 0.0)
        """
        if self.rate <= 0:
            return 0.0
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens, last = self._buckets.get(caller, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            if tokens >= 1.0:
                self._buckets[caller] = (tokens - 1.0, now)
                return 0.0
            self._buckets[caller] = (tokens, now)
            return (1.0 - tokens) / self.rate


def _error(status: int, message: str, code: str, headers: dict[str, str] | None = None) -> Any:
    from fastapi.responses import JSONResponse

    kind = "rate_limit_error" if status == 429 else "authentication_error"
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def install_api_keys(app: Any, settings: Settings) -> ApiKeys:
    """Require keys on the protected routes of ``app`` (a no-op while none is configured)."""
    keys = ApiKeys(settings)
    limiter = RateLimiter(settings.api_key_rate_per_s, settings.api_key_burst)

    class ApiKeyMiddleware:
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] != "http" or scope["path"] not in PROTECTED or not keys.enabled:
                await self.inner(scope, receive, send)
                return
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
            scheme, _, key = headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not key.strip():
                response = _error(
                    401,
                    "this route needs an API key: send 'Authorization: Bearer <key>' (keys are configured "
                    "with ATALAIA_API_KEYS or ATALAIA_API_KEYS_FILE)",
                    "missing_api_key",
                )
            else:
                caller = keys.caller(key.strip())
                if caller is None:
                    response = _error(403, "the API key is not valid (unknown or revoked)", "invalid_api_key")
                else:
                    wait = limiter.take(caller)
                    if wait <= 0:
                        token = current_caller.set(caller)
                        try:
                            await self.inner(scope, receive, send)
                        finally:
                            current_caller.reset(token)
                        return
                    response = _error(
                        429,
                        f"rate limit of {settings.api_key_rate_per_s:g} requests/s for caller {caller!r} exceeded; "
                        f"retry in {math.ceil(wait)} s",
                        "rate_limit_exceeded",
                        {"Retry-After": str(math.ceil(wait))},
                    )
            await response(scope, receive, send)

    app.add_middleware(ApiKeyMiddleware)
    return keys
