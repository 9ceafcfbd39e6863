"""Throughput of PII redaction (:mod:`producers.redaction`) on short chat texts and whole events.

The texts are a mix like production traffic: most hold no personal data (questions about
regulations, with dates, amounts and section numbers that must survive), some hold one or two
values (emails, Brazilian and international phones, CPFs, SSNs, cards). Rates are medians over
repeats.

Usage::

    .venv/bin/python bench/redaction.py [--texts 20000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from atalaia.events import ChatMessage, InferenceEvent, RetrievedPassage
from bench.common import median
from producers.redaction import redact_event, redact_text

CLEAN = [
    "How many vacation days do I get per year?",
    "What does section 4.2 say about overtime on weekends?",
    "Is the BRL 5,000 relocation allowance taxable?",
    "Can I take leave from 2026-11-29 to 2026-12-10?",
    "Quantos dias de férias tenho direito após 12 meses?",
    "The meeting is at 14:30, bring form HR-07 signed.",
    "Which holidays apply in 2026-2027 for the Lisbon office?",
    "Explain clause 3.1.4 of the remote work policy, please.",
]
DIRTY = [
    "My email is ana.silva@example.com, please reply there.",
    "Me liga no +55 11 91234-5678 ou (11) 3456-7890.",
    "Meu CPF é 123.456.789-09, pode verificar o cadastro?",
    "Call me at +1 415 555 0100 about the SSN 123-45-6789.",
    "Refund to card 4111 1111 1111 1111, expiry 12/26.",
    "Ligue para +351 912 345 678 depois das 18:00.",
]


def rate(work: Callable[[], object], items: int, repeats: int) -> float:
    """Median items per second of ``work`` (which processes ``items`` items) over ``repeats`` runs."""
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        rates.append(items / (time.perf_counter() - start))
    return median(rates)


def _redact_all(texts: list[str]) -> list[tuple[str, dict[str, int]]]:
    return [redact_text(t) for t in texts]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    # 4 clean : 1 with PII, cycled to the requested count.
    pool = CLEAN * 3 + DIRTY
    mixed = [pool[i % len(pool)] for i in range(args.texts)]
    clean = [CLEAN[i % len(CLEAN)] for i in range(args.texts)]
    dirty = [DIRTY[i % len(DIRTY)] for i in range(args.texts)]
    avg = sum(map(len, mixed)) / len(mixed)
    print(f"redact_text: {args.texts} short texts ({avg:.0f} chars on average), median of {args.repeats} runs")
    for name, texts in (("mixed (1 in 5 with PII)", mixed), ("no PII", clean), ("all with PII", dirty)):
        r = rate(partial(_redact_all, texts), len(texts), args.repeats)
        print(f"  {name:<26} {r:>10,.0f} texts/s")

    events = [
        InferenceEvent(
            service="svc",
            model_version="m@1",
            messages=[ChatMessage(role="system", content=CLEAN[1]), ChatMessage(role="user", content=t)],
            response=CLEAN[(i + 3) % len(CLEAN)],
            context=[RetrievedPassage(id="p1", text=CLEAN[(i + 5) % len(CLEAN)])],
            latency_ms=1.0,
            prompt_tokens=1,
            completion_tokens=1,
            cost=0.0,
            metadata={"max_tokens": 64, "note": t},
        )
        for i, t in enumerate(mixed[: max(1, args.texts // 4)])
    ]
    r = rate(lambda: [redact_event(e) for e in events], len(events), args.repeats)
    print(f"redact_event: {len(events)} inference events (6 texts each), {r:,.0f} events/s")


if __name__ == "__main__":
    main()
