"""Which model answers a request during a canary: a sticky traffic split.

While a canary runs (:attr:`inference.models.ModelManager.canary`), a share of the callers is sent
to the candidate and the rest to the active (parent) model. The choice is sticky: a hash of the
caller's key, salted with the candidate's version, puts each caller in a bucket in ``[0, 1)``,
and the buckets below the share go to the candidate. The key is, first found:

1. the request's ``user`` (an end user; one API key often serves many users, and splitting by
   user keeps the share right when there is one key),
2. the API-key caller,
3. a hash of the messages (anonymous traffic: the same question goes to the same version).

The salt changes the buckets from one candidate to the next, so the same users are not always
the ones exposed to new versions.

In ``shadow`` mode the parent answers every request; the requests in the candidate's share are
*also* answered by the candidate, whose answer is emitted as an event flagged ``shadow`` and
scored, never returned.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from inference.models import Canary, ServedModel


@dataclass(frozen=True)
class Route:
    """The model that answers a request, and the one that answers it in shadow (if any)."""

    served: ServedModel
    shadow: ServedModel | None = None
    #: ``candidate`` or ``parent`` while a canary runs; None otherwise.
    arm: str | None = None


def sticky_key(user: str | None, caller: str | None, messages: Sequence[Any]) -> str:
    """The key a request is split by: ``user:``, ``caller:`` or ``messages:`` followed by its value.

    Examples
    --------
    >>> sticky_key("alice", "app-1", [])
    'user:alice'
    >>> sticky_key(None, "app-1", [])
    'caller:app-1'
    >>> sticky_key(None, None, [{"role": "user", "content": "hi"}])[:9]
    'messages:'
    """
    if user:
        return f"user:{user}"
    if caller:
        return f"caller:{caller}"
    digest = hashlib.sha256(json.dumps(list(messages), sort_keys=True, default=str).encode()).hexdigest()
    return f"messages:{digest[:32]}"


def bucket(key: str, salt: str) -> float:
    """A uniform number in ``[0, 1)`` fixed by ``key`` and ``salt`` (SHA-256, first 8 bytes).

    >>> bucket("user:alice", "m@2") == bucket("user:alice", "m@2")
    True
    >>> 0 <= bucket("user:alice", "m@2") < 1
    True
    """
    digest = hashlib.sha256(f"{salt}\0{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def choose(active: ServedModel, canary: Canary | None, key: str) -> Route:
    """Route a request with sticky key ``key``.

    Examples
    --------
    >>> parent, cand = ServedModel("m@1", "g1"), ServedModel("m@2", "g2")
    >>> choose(parent, None, "user:a").served.version
    'm@1'
    >>> split = Canary(cand, share=1.0)
    >>> choose(parent, split, "user:a").served.version
    'm@2'
    >>> route = choose(parent, Canary(cand, share=1.0, mode="shadow"), "user:a")
    >>> route.served.version, route.shadow.version
    ('m@1', 'm@2')
    """
    if canary is None or canary.candidate.version == active.version:
        return Route(active)
    in_share = bucket(key, canary.candidate.version) < canary.share
    if canary.mode == "shadow":
        return Route(active, canary.candidate if in_share else None, "parent")
    return Route(canary.candidate, None, "candidate") if in_share else Route(active, None, "parent")
