"""``Generator.chat_batch`` (the gate's batched answers) gives what ``chat`` gives one at a time.

A tiny random Llama with the prepared SmolLM2 tokenizer (ChatML template, ``<|im_end|>``): batched
rows are left-padded with ``<|im_end|>`` under an attention mask, so every row must decode as it
does alone. ``tests/integration/test_models.py`` checks the same on the real model.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from atalaia.models.generator import Generator, PromptTooLongError
from tests.unit.tiny_models import tiny_chat_generator


@pytest.fixture(scope="module")
def tiny_generator(models_dir: Path) -> Generator:
    return tiny_chat_generator()


CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Name three colours of the rainbow, and say why the sky is blue."}],
    [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Two plus two?"}],
]


def test_batched_answers_equal_one_at_a_time(tiny_generator: Generator) -> None:
    alone = [tiny_generator.chat(m, max_tokens=12) for m in CONVERSATIONS]
    batched = tiny_generator.chat_batch(CONVERSATIONS, max_tokens=12)
    assert [(r.text, r.prompt_tokens, r.completion_tokens, r.finish_reason) for r in batched] == [
        (r.text, r.prompt_tokens, r.completion_tokens, r.finish_reason) for r in alone
    ]
    assert len({r.prompt_tokens for r in batched}) == 3  # really different lengths: padding was used


def test_empty_batch_and_limits(tiny_generator: Generator) -> None:
    assert tiny_generator.chat_batch([], max_tokens=4) == []
    assert tiny_generator.batches is True
    with pytest.raises(PromptTooLongError):
        tiny_generator.chat_batch(CONVERSATIONS, max_tokens=250)
