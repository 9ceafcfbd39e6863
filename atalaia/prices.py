"""Shipped list prices of common hosted models, in USD per 1,000 tokens (the unit of ``ATALAIA_PRICES``).

Standard (pay-as-you-go, non-batch, non-cached, shortest-context tier) input and output prices
as the providers' public pricing pages listed them on :data:`PRICES_AS_OF` (OpenAI
https://openai.com/api/pricing, Anthropic https://www.anthropic.com/pricing#api, Google
https://ai.google.dev/gemini-api/docs/pricing, Mistral https://mistral.ai/pricing). Prices
change: ``ATALAIA_PRICES`` and a gateway upstream's ``prices`` override this table.

A model matches the longest table name it starts with, so dated snapshots
(``gpt-4o-mini-2024-07-18``, ``claude-sonnet-4-5-20250929``) find their family, and
``provider/model`` forms (``openai/gpt-4o``) are looked up by the model part.

>>> hosted_price("gpt-4o-mini-2024-07-18")
(0.00015, 0.0006)
>>> hosted_price("my-own-model") is None
True
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

#: When the table was last checked: compiled on 2025-11-01 from the pages named above; on 2026-12-06
#: spot-checked (Haiku 4.5, Gemini 2.5) against copies of those pages, and the newer Claude and
#: Gemini families added from them (the official pages are not reachable from the build machine);
#: on 2026-12-07 the siblings priced apart from their family (``o1-mini``, ``o1-pro``, ``o3-pro``,
#: the deep-research and realtime models, ``gpt-5-pro``, ``gpt-4`` and its 32k, preview and vision models,
#: the first ``gpt-4o`` snapshot, ``chatgpt-4o-latest``, ``gpt-4.5-preview``) added, so that the
#: longest-prefix match below does not price them as the family; these come from copies of the
#: OpenAI page and third-party listings, not the page itself.
PRICES_AS_OF = "2026-12-07"

# USD per 1M tokens (input, output) as the pricing pages show them; divided by 1000 below.
_PER_MILLION: dict[str, tuple[float, float]] = {
    # OpenAI
    "gpt-5": (1.25, 10.0),
    "gpt-5-mini": (0.25, 2.0),
    "gpt-5-nano": (0.05, 0.40),
    "gpt-5-pro": (15.0, 120.0),
    "gpt-4.1": (2.0, 8.0),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4o": (2.50, 10.0),
    "gpt-4o-2024-05-13": (5.0, 15.0),
    "chatgpt-4o-latest": (5.0, 15.0),
    "gpt-4o-realtime-preview": (5.0, 20.0),
    "gpt-4o-mini-realtime-preview": (0.60, 2.40),
    "gpt-4.5-preview": (75.0, 150.0),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4-turbo": (10.0, 30.0),
    "gpt-4": (30.0, 60.0),
    "gpt-4-32k": (60.0, 120.0),
    "gpt-4-1106-preview": (10.0, 30.0),
    "gpt-4-0125-preview": (10.0, 30.0),
    "gpt-4-vision-preview": (10.0, 30.0),
    "gpt-4-1106-vision-preview": (10.0, 30.0),
    "gpt-3.5-turbo": (0.50, 1.50),
    "o3": (2.0, 8.0),
    "o3-pro": (20.0, 80.0),
    "o3-deep-research": (10.0, 40.0),
    "o3-mini": (1.10, 4.40),
    "o4-mini": (1.10, 4.40),
    "o4-mini-deep-research": (2.0, 8.0),
    "o1": (15.0, 60.0),
    "o1-pro": (150.0, 600.0),
    "o1-mini": (1.10, 4.40),
    # Anthropic
    "claude-opus-4-7": (5.0, 25.0),
    "claude-opus-4-6": (5.0, 25.0),
    "claude-sonnet-4-6": (3.0, 15.0),
    "claude-opus-4-5": (5.0, 25.0),
    "claude-opus-4-1": (15.0, 75.0),
    "claude-opus-4": (15.0, 75.0),
    "claude-sonnet-4-5": (3.0, 15.0),
    "claude-sonnet-4": (3.0, 15.0),
    "claude-haiku-4-5": (1.0, 5.0),
    "claude-3-7-sonnet": (3.0, 15.0),
    "claude-3-5-sonnet": (3.0, 15.0),
    "claude-3-5-haiku": (0.80, 4.0),
    "claude-3-opus": (15.0, 75.0),
    "claude-3-haiku": (0.25, 1.25),
    # Google (prompts up to 200k tokens where the price depends on it)
    "gemini-3.1-pro": (2.0, 12.0),
    "gemini-3.1-flash-lite": (0.25, 1.50),
    "gemini-3-pro": (2.0, 12.0),
    "gemini-3-flash": (0.50, 3.0),
    "gemini-2.5-pro": (1.25, 10.0),
    "gemini-2.5-flash": (0.30, 2.50),
    "gemini-2.5-flash-lite": (0.10, 0.40),
    "gemini-2.0-flash": (0.10, 0.40),
    "gemini-2.0-flash-lite": (0.075, 0.30),
    "gemini-1.5-pro": (1.25, 5.0),
    "gemini-1.5-flash": (0.075, 0.30),
    # Mistral
    "mistral-large": (2.0, 6.0),
    "mistral-medium": (0.40, 2.0),
    "mistral-small": (0.10, 0.30),
    "codestral": (0.30, 0.90),
    "pixtral-large": (2.0, 6.0),
    "ministral-8b": (0.10, 0.10),
    "ministral-3b": (0.04, 0.04),
    "open-mistral-nemo": (0.15, 0.15),
}

#: USD per 1,000 tokens (prompt, completion) of each model family.
HOSTED_PRICES: dict[str, tuple[float, float]] = {
    name: (round(inp / 1000, 9), round(out / 1000, 9)) for name, (inp, out) in _PER_MILLION.items()
}


def family_of(model: str, families: Iterable[str]) -> str | None:
    """The longest of ``families`` that names ``model``: the same name, or a prefix of it followed
    by ``-`` or ``@`` (dated snapshots, ``gpt-4o-mini-2024-07-18``, ``claude-sonnet-4-5@20250929``).
    A ``provider/`` or Gemini ``models/`` prefix of ``model`` is ignored; case is ignored.

    >>> family_of("openai/GPT-4o-mini-2024-07-18", ["gpt-4o", "gpt-4o-mini"])
    'gpt-4o-mini'
    >>> family_of("gpt-4o2", ["gpt-4o"]) is None
    True
    """
    name = model.rsplit("/", 1)[-1].lower()
    best: str | None = None
    for family in families:
        key = family.lower()
        if (name == key or name.startswith(key + "-") or name.startswith(key + "@")) and (
            best is None or len(key) > len(best)
        ):
            best = family
    return best


@functools.lru_cache(maxsize=4096)
def hosted_family(model: str) -> str | None:
    """The family of the shipped table that prices ``model`` (see :func:`family_of`), or None."""
    return family_of(model, HOSTED_PRICES)


def hosted_price(model: str) -> tuple[float, float] | None:
    """(USD per 1k prompt tokens, USD per 1k completion tokens) of a hosted model, or None if unknown."""
    family = hosted_family(model)
    return None if family is None else HOSTED_PRICES[family]
