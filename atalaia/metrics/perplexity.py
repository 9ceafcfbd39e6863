"""Perplexity of texts under a causal language model (SmolLM2 by default)."""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from typing import Any


class PerplexityScorer:
    """Batched perplexity: ``exp`` of the mean token negative log-likelihood of each text.

    Texts are truncated to ``max_tokens`` tokens (the metric is about fluency, and a bound keeps
    the cost per event fixed). A text of fewer than 2 tokens has no perplexity: ValueError.
    """

    def __init__(self, model: Any, tokenizer: Any, max_tokens: int = 128, batch_size: int = 8) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.batch_size = batch_size
        self._lock = threading.Lock()
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    def score(self, texts: Sequence[str]) -> list[float | ValueError]:
        """Perplexity of each text, or the ValueError explaining why it has none."""
        import torch

        results: list[float | ValueError] = []
        for start in range(0, len(texts), self.batch_size):
            chunk = list(texts[start : start + self.batch_size])
            enc = self.tokenizer(
                chunk,
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=self.max_tokens,
                add_special_tokens=False,
            )
            ids, mask = enc["input_ids"], enc["attention_mask"]
            with self._lock, torch.inference_mode():
                logits = self.model(input_ids=ids, attention_mask=mask).logits.float()
            logprobs = torch.log_softmax(logits[:, :-1], dim=-1)
            target = ids[:, 1:]
            token_lp = logprobs.gather(-1, target.unsqueeze(-1)).squeeze(-1)
            tmask = mask[:, 1:].to(token_lp.dtype)
            counts = tmask.sum(dim=1)
            nll = -(token_lp * tmask).sum(dim=1)
            for n, total in zip(counts.tolist(), nll.tolist(), strict=True):
                if n < 1:
                    results.append(ValueError("text has fewer than 2 tokens"))
                else:
                    results.append(math.exp(total / n))
        return results
