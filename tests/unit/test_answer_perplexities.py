"""Holdout perplexity is the same whether a backend gives full logits or token log-probabilities
(the OpenVINO GenAI path, ``token_logprobs``)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch

from retrain.evaluate import answer_perplexities

VOCAB, EOS = 12, 11


class _Tokenizer:
    def apply_chat_template(self, messages: list[dict[str, str]], **_: Any) -> dict[str, list[int]]:
        return {"input_ids": [1 + (ord(c) % 9) for c in messages[0]["content"]]}

    def convert_tokens_to_ids(self, token: str) -> int:
        return EOS

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": [1 + (ord(c) % 9) for c in text]}


class _Bigram:
    """Logits depend on the previous token only: a fixed random table."""

    def __init__(self) -> None:
        self.table = torch.randn(VOCAB, VOCAB, generator=torch.Generator().manual_seed(3))
        self.config = SimpleNamespace(max_position_embeddings=64)

    def __call__(self, input_ids: torch.Tensor, **_: Any) -> SimpleNamespace:
        return SimpleNamespace(logits=self.table[input_ids])


class _WithLogprobs(_Bigram):
    def token_logprobs(self, ids: list[int]) -> list[float]:
        lp = torch.log_softmax(self.table, dim=-1)
        return [float(lp[ids[j - 1], ids[j]]) for j in range(1, len(ids))]


def test_token_logprobs_give_the_perplexity_of_full_logits() -> None:
    prompts = [[{"role": "user", "content": q}] for q in ("leave days?", "travel", "a")]
    answers = ["twenty five", "by train", "ok"]
    full = answer_perplexities(_Bigram(), _Tokenizer(), prompts, answers)
    fast = answer_perplexities(_WithLogprobs(), _Tokenizer(), prompts, answers)
    assert fast[0] == pytest.approx(full[0], rel=1e-5)
    assert fast[1] == pytest.approx(full[1], rel=1e-5)
