"""Traffic simulator: employees asking the regulations assistant questions over HTTP."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

#: The project's QA set (questions with reference answers drawn from the regulations).
DEFAULT_QA = Path(__file__).resolve().parents[1] / "data" / "qa" / "train.jsonl"

#: Fallback questions, without references, when the QA set is not available.
QUESTIONS: tuple[str, ...] = (
    "How many days of paid vacation do I get per year?",
    "What is the deadline for submitting an expense report?",
    "Can I work remotely from another country?",
    "Who approves international travel?",
    "How do I report a security incident?",
    "What is the daily meal allowance on business trips?",
    "How long are personal data of customers kept?",
    "Can I accept a gift from a supplier?",
    "What is the notice period for resigning?",
    "How many sick days can I take without a medical certificate?",
)


def load_questions(path: Path | None = None) -> list[tuple[str, str | None]]:
    """(question, reference answer) pairs from a QA JSON-lines file, or the built-in questions.

    >>> load_questions(Path("/nonexistent"))[0]
    ('How many days of paid vacation do I get per year?', None)
    """
    path = path or DEFAULT_QA
    if not path.is_file():
        return [(q, None) for q in QUESTIONS]
    pairs = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            item = json.loads(line)
            pairs.append((str(item["question"]), item.get("answer")))
    return pairs


@dataclass
class SimulationResult:
    """What the simulator sent and got back."""

    sent: int = 0
    ok: int = 0
    failed: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    completion_ids: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def simulate(
    base_url: str,
    requests: int,
    rate_per_s: float = 0.0,
    model: str = "smollm2-135m-instruct",
    max_tokens: int = 32,
    seed: int = 0,
    timeout_s: float = 120.0,
    on_response: Callable[[int, SimulationResult], None] | None = None,
    questions: list[tuple[str, str | None]] | None = None,
) -> SimulationResult:
    """Send ``requests`` chat completions to ``base_url``; ``rate_per_s`` 0 means back to back.

    Failures are counted and kept (first 20 messages), never raised, so a long run survives a
    service restart.
    """
    rng = random.Random(seed)
    pool = questions or load_questions()
    result = SimulationResult()
    interval = 1.0 / rate_per_s if rate_per_s > 0 else 0.0
    next_at = time.monotonic()
    with httpx.Client(base_url=base_url, timeout=timeout_s) as client:
        for i in range(requests):
            if interval:
                delay = next_at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                next_at += interval
            question, reference = rng.choice(pool)
            body: dict[str, object] = {
                "model": model,
                "messages": [
                    {"role": "system", "content": "You are the company's regulations assistant. Answer briefly."},
                    {"role": "user", "content": question},
                ],
                "max_tokens": max_tokens,
            }
            if reference:
                # The reference answer travels with the event, so the workers can score the reply.
                body["metadata"] = {"reference": reference}
            started = time.perf_counter()
            result.sent += 1
            try:
                resp = client.post("/v1/chat/completions", json=body)
                if resp.status_code == 200:
                    result.ok += 1
                    result.completion_ids.append(resp.json()["id"])
                else:
                    result.failed += 1
                    if len(result.errors) < 20:
                        result.errors.append(f"HTTP {resp.status_code}: {resp.text[:200]}")
            except httpx.HTTPError as exc:
                result.failed += 1
                if len(result.errors) < 20:
                    result.errors.append(f"{type(exc).__name__}: {exc}")
            result.latencies_ms.append((time.perf_counter() - started) * 1000.0)
            if on_response is not None:
                on_response(i, result)
    return result
