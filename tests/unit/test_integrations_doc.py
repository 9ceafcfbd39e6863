"""docs/integrations.md stays in step with what the tests run and with the shipped price table."""

from __future__ import annotations

from pathlib import Path

import pytest

from atalaia.prices import HOSTED_PRICES, PRICES_AS_OF, hosted_price

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "integrations.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("name", ["otel_openai_app.py", "gateway_openai_app.py", "gateway_anthropic_app.py"])
def test_the_snippets_in_the_doc_are_the_files_the_tests_run(name: str) -> None:
    code = (ROOT / "docs" / "snippets" / name).read_text(encoding="utf-8").rstrip()
    assert f"```python\n{code}\n```" in DOC


def test_the_doc_lists_every_shipped_price_with_its_date() -> None:
    assert PRICES_AS_OF in DOC
    for name, (prompt, completion) in HOSTED_PRICES.items():
        assert f"| `{name}` | {prompt:g} | {completion:g} |" in DOC


@pytest.mark.parametrize(
    ("model", "family"),
    [
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("gpt-4o-mini", "gpt-4o-mini"),
        ("openai/gpt-4.1-nano", "gpt-4.1-nano"),
        ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
        ("claude-3-5-haiku-latest", "claude-3-5-haiku"),
        ("models/gemini-2.5-flash-lite", "gemini-2.5-flash-lite"),
        ("mistral-large-latest", "mistral-large"),
        ("o3-mini-2025-01-31", "o3-mini"),
        # Siblings priced apart from their family: the longest name wins, never the family's price.
        ("o1-mini-2024-09-12", "o1-mini"),
        ("o1-pro", "o1-pro"),
        ("o3-pro-2025-06-10", "o3-pro"),
        ("gpt-5-pro", "gpt-5-pro"),
        ("gpt-4o-2024-05-13", "gpt-4o-2024-05-13"),
        ("gpt-4-0613", "gpt-4"),
        ("gpt-4-32k-0613", "gpt-4-32k"),
        ("o3-deep-research-2025-06-26", "o3-deep-research"),
        ("o4-mini-deep-research", "o4-mini-deep-research"),
        ("gpt-4o-mini-realtime-preview-2024-12-17", "gpt-4o-mini-realtime-preview"),
    ],
)
def test_dated_and_prefixed_names_find_their_family(model: str, family: str) -> None:
    assert hosted_price(model) == HOSTED_PRICES[family]


def test_prices_settings_override_the_table(tmp_path: Path) -> None:
    from atalaia.settings import Settings

    s = Settings(home=tmp_path, prices={"gpt-4o": (1.0, 2.0), "claude-haiku-4-5": (2.0, 2.0)})
    assert s.price_for("gpt-4o") == (1.0, 2.0)
    # Providers answer with dated names: ATALAIA_PRICES' family must price them, as the table does.
    assert s.price_for("gpt-4o-2024-08-06") == (1.0, 2.0)
    assert s.price_for("claude-haiku-4-5-20251001") == (2.0, 2.0)
    # ... but not a longer family of the shipped table that only starts like it.
    assert s.price_for("gpt-4o-mini-2024-07-18") == HOSTED_PRICES["gpt-4o-mini"]
    assert s.configured_price("gpt-4o-mini-2024-07-18") is None
    assert s.price_for("my-own-model") == (s.price_per_1k_prompt_tokens, s.price_per_1k_completion_tokens)
