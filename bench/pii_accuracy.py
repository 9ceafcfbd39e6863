"""Recall and false positives of PII redaction (:mod:`atalaia.redaction`) on a generated test set.

For each rule: **recall** is the share of generated valid values (random, with correct check
digits) replaced by the right placeholder inside a Portuguese or English sentence; **false
positives** is the share of uniformly random strings of the same shape (so about 1 in 100 of the
11-digit strings are, by chance, valid CPFs) that are replaced by anything. Shapes are tested bare
and, where the rule reads context, after their keyword. Finally the handbook (data/regulations)
and the QA answers are redacted, and every replacement there is a false positive on real text.

Usage::

    .venv/bin/python bench/pii_accuracy.py [--n 20000] [--seed 7]
"""

from __future__ import annotations

import argparse
import random
import string
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from atalaia.redaction import (  # noqa: E402
    IBAN_LENGTHS,
    PLACEHOLDERS,
    cnpj_valid,
    cpf_valid,
    iban_valid,
    nif_valid,
    redact_text,
)

SENTENCES = ("Meu documento é {} , obrigado.", "Please use {} for the refund.", "Segue: {}")


def _digits(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(string.digits) for _ in range(n))


def valid_cpf(rng: random.Random) -> str:
    while True:
        base = _digits(rng, 9)
        nums = [int(c) for c in base]
        for n in (9, 10):
            nums.append(sum(nums[i] * (n + 1 - i) for i in range(n)) * 10 % 11 % 10)
        value = "".join(map(str, nums))
        if cpf_valid(value):
            return value


def valid_cnpj(rng: random.Random) -> str:
    while True:
        value = _digits(rng, 12)
        for n in (12, 13):
            weights = [(n - 7 - i) if i < n - 8 else (n + 1 - i) for i in range(n)]
            r = sum(w * int(c) for w, c in zip(weights, value, strict=False)) % 11
            value += str(0 if r < 2 else 11 - r)
        if cnpj_valid(value):
            return value


def valid_nif(rng: random.Random) -> str:
    while True:
        base = rng.choice("1235689") + _digits(rng, 7)
        r = sum(int(d) * (9 - i) for i, d in enumerate(base)) % 11
        value = base + str(0 if r < 2 else 11 - r)
        if nif_valid(value):
            return value


def valid_iban(rng: random.Random, country: str | None = None) -> str:
    country = country or rng.choice(["PT", "BR", "ES", "FR", "DE", "GB", "IT", "NL"])
    length = IBAN_LENGTHS[country]
    bban = _digits(rng, length - 4)
    rearranged = bban + country + "00"
    check = 98 - int("".join(str(int(c, 36)) for c in rearranged)) % 97
    value = f"{country}{check:02d}{bban}"
    assert iban_valid(value)
    return value


def grouped(value: str, size: int = 4) -> str:
    return " ".join(value[i : i + size] for i in range(0, len(value), size))


def fmt_cpf(v: str) -> str:
    return f"{v[:3]}.{v[3:6]}.{v[6:9]}-{v[9:]}"


def fmt_cnpj(v: str) -> str:
    return f"{v[:2]}.{v[2:5]}.{v[5:8]}/{v[8:12]}-{v[12:]}"


def fmt_nif(v: str) -> str:
    return f"{v[:3]} {v[3:6]} {v[6:]}"


def rate(values: list[str], kind: str | None, rng: random.Random) -> float:
    """Share of values replaced: by ``kind``'s placeholder, or by any placeholder when None."""
    hits = 0
    for value in values:
        text = rng.choice(SENTENCES).format(value)
        redacted, counts = redact_text(text)
        if kind is None:
            hits += bool(counts)
        else:
            hits += value not in redacted and PLACEHOLDERS[kind] in redacted
    return hits / len(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000, help="values per row")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    n = args.n

    def many(make: Callable[[], str]) -> list[str]:
        return [make() for _ in range(n)]

    start = time.perf_counter()
    print(f"recall on valid values ({n} each, right placeholder)")
    recall_rows = [
        ("CPF bare", "cpf", many(lambda: valid_cpf(rng))),
        ("CPF formatted", "cpf", many(lambda: fmt_cpf(valid_cpf(rng)))),
        ("CNPJ bare", "cnpj", many(lambda: valid_cnpj(rng))),
        ("CNPJ formatted", "cnpj", many(lambda: fmt_cnpj(valid_cnpj(rng)))),
        ("NIF bare", "nif", many(lambda: valid_nif(rng))),
        ("NIF after 'NIF', grouped", "nif", many(lambda: "NIF " + fmt_nif(valid_nif(rng)))),
        ("IBAN contiguous", "iban", many(lambda: valid_iban(rng))),
        ("IBAN in groups of 4", "iban", many(lambda: grouped(valid_iban(rng)))),
        ("PIX random key after 'pix'", "pix", many(lambda: f"chave pix {uuid.UUID(int=rng.getrandbits(128))}")),
        (
            "RG formatted",
            "rg",
            many(lambda: f"{_digits(rng, 2)}.{_digits(rng, 3)}.{_digits(rng, 3)}-{_digits(rng, 1)}"),
        ),
    ]
    for label, kind, values in recall_rows:
        print(f"  {label:<32} {rate(values, kind, rng):.4f}")

    print(f"false positives on random strings of the same shape ({n} each, any placeholder)")
    countries = ["PT", "BR", "ES", "FR", "DE", "GB", "IT", "NL"]
    fp_rows = [
        ("11 digits (CPF shape)", many(lambda: _digits(rng, 11))),
        ("ddd.ddd.ddd-dd (CPF format)", many(lambda: fmt_cpf(_digits(rng, 11)))),
        ("14 digits (CNPJ shape)", many(lambda: _digits(rng, 14))),
        ("dd.ddd.ddd/dddd-dd (CNPJ format)", many(lambda: fmt_cnpj(_digits(rng, 14)))),
        ("9 digits (NIF shape)", many(lambda: _digits(rng, 9))),
        ("9 digits, issued NIF prefix", many(lambda: rng.choice("1235689") + _digits(rng, 8))),
        ("'NIF ' + 9 digits", many(lambda: "NIF " + _digits(rng, 9))),
        (
            "IBAN shape (country, length)",
            many(lambda: (c := rng.choice(countries)) + _digits(rng, IBAN_LENGTHS[c] - 2)),
        ),
        ("UUID without 'pix'", many(lambda: str(uuid.UUID(int=rng.getrandbits(128))))),
        ("8 digits (RG shape, no 'RG')", many(lambda: _digits(rng, 8))),
        ("13-19 digits from 2-6 (card)", many(lambda: rng.choice("23456") + _digits(rng, rng.randint(12, 18)))),
    ]
    for label, values in fp_rows:
        print(f"  {label:<32} {rate(values, None, rng):.4f}")

    texts = []
    for path in sorted((ROOT / "data" / "regulations").glob("*.md")):
        texts += [p for p in path.read_text(encoding="utf-8").split("\n\n") if p.strip()]
    for name in ("train.jsonl", "holdout.jsonl"):
        texts += (ROOT / "data" / "qa" / name).read_text(encoding="utf-8").splitlines()
    found: dict[str, int] = {}
    for text in texts:
        for kind, count in redact_text(text)[1].items():
            found[kind] = found.get(kind, 0) + count
    print(f"handbook + QA ({len(texts)} paragraphs and pairs): replacements {found or 'none'}")
    print(f"({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
