"""PII redaction for events before they leave the process (LGPD / GDPR data minimisation).

Personal data a user types into a chat (an email, a phone number, a CPF, a card number) would
otherwise be copied to Kafka, the metric store and retraining sets. :func:`redact_event` replaces
each such value with a placeholder naming its kind, and records how many of each it replaced.

Kinds, in the order they are applied (each pass sees the previous passes' placeholders, which hold
no digits, so an earlier kind always wins an overlap):

1. ``email`` → ``[EMAIL]``; first, because addresses may hold digit runs that look like a CPF
   or a phone (``12345678909@example.com`` is one email, not a CPF).
   ``pix`` → ``[PIX]``: a PIX random key (a UUID) or a bare 10–11 digit phone number written
   within 30 characters after the word "pix" (a UUID alone is an id like any other). PIX keys
   that are an email, a CPF, a CNPJ or a ``+55`` phone are redacted as those kinds.
   ``iban`` → ``[IBAN]``: two letters of a country that issues IBANs, two check digits and that
   country's BBAN length, contiguous or in groups of four, passing ISO 13616's mod-97 check.
   ``cnpj`` → ``[CNPJ]``: ``dd.ddd.ddd/dddd-dd`` always (also the alphanumeric CNPJ issued from
   July 2026, letters in the first twelve places), 14 bare digits only with valid check digits.
2. ``card`` → ``[CARD]``: 13–19 digits starting with 2–6, contiguous or in the printed groups
   (4-4-4-4[-1..3], Amex 4-6-5, Diners 4-6-4) with spaces or dashes, and Luhn-valid. Before
   phones and CPFs so a card's digits are never split into a "phone" and a remainder. Not after
   a ``+``: that is a phone.
3. ``cpf`` → ``[CPF]``: ``ddd.ddd.ddd-dd`` always (the format alone says CPF); ``ddddddddd-dd`` and
   bare 11 digits only with valid check digits, so that order numbers and bare 11-digit phone
   numbers are left alone (about 1 in 100 arbitrary 11-digit numbers still pass the check).
   ``rg`` → ``[RG]``: a Brazilian RG ``dd.ddd.ddd-d`` (or ``-X``) always; 7–9 bare digits
   (optionally ``-d``/``-X``) only right after "RG". States number RGs differently and only São
   Paulo's has a public check digit, so the format or the word is the evidence.
   ``nif`` → ``[NIF]``: a Portuguese NIF/NIPC, 9 digits with a valid mod-11 check digit and a
   first digit (or two) that is issued; after "NIF", "NIPC", "contribuinte" or a "PT" VAT prefix
   also when written in groups of three. Bare, about 1 in 11 arbitrary 9-digit numbers with an
   issued prefix pass the check, so bare 9-digit order numbers are sometimes redacted
   (BENCHMARKS.md measures it).
4. ``ssn`` → ``[SSN]``: ``ddd-dd-dddd`` with a valid area (not 000, 666, 9xx), group and serial.
   Before phones, although no phone pattern matches that shape today.
5. ``phone`` → ``[PHONE]``: international with ``+`` (8–15 digits, E.164), Brazilian national with
   a parenthesised DDD ``(11) 91234-5678`` / ``(11) 3456-7890``, ``11 91234-5678`` and bare mobile
   ``91234-5678``, and US national ``(415) 555-0100`` / ``415-555-0100``.

Left alone on purpose: amounts (``BRL 5,000``, ``R$ 1.234,56``), dates (``2026-11-29``,
``29/11/2026``), times, year ranges (``2024-2025``), section numbers (``1.2``), codes
(``HR-07``), Portuguese national numbers without ``+351`` (``912 345 678`` reads like an amount
with thin-space thousands separators) and phone numbers written as bare digits.

Known over-redaction, accepted because a false ``[PHONE]`` costs less than a leaked number: a US
ZIP+4 starting with 9 (``94105-1234``) has the shape of a Brazilian mobile; an international phone
followed by a space and more digits takes them too, up to E.164's 15 (``+1 415 555 0100 2026``);
about 1 in 10 arbitrary 13–19 digit numbers starting with 2–6 pass the Luhn check.

Examples
--------
>>> redact_text("Email ana@example.com or call +55 11 91234-5678; CPF 123.456.789-09.")
('Email [EMAIL] or call [PHONE]; CPF [CPF].', {'email': 1, 'cpf': 1, 'phone': 1})
>>> redact_text("Pay BRL 5,000 by 2026-11-29 per section 1.2 of form HR-07.")
('Pay BRL 5,000 by 2026-11-29 per section 1.2 of form HR-07.', {})
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar, cast

from atalaia.events import ChatMessage, FeedbackEvent, InferenceEvent, RetrievedPassage

__all__ = [
    "PLACEHOLDERS",
    "cnpj_valid",
    "cpf_valid",
    "iban_valid",
    "luhn_valid",
    "nif_valid",
    "redact_event",
    "redact_text",
    "redact_value",
]

PLACEHOLDERS = {
    "email": "[EMAIL]",
    "pix": "[PIX]",
    "iban": "[IBAN]",
    "cnpj": "[CNPJ]",
    "card": "[CARD]",
    "cpf": "[CPF]",
    "rg": "[RG]",
    "nif": "[NIF]",
    "ssn": "[SSN]",
    "phone": "[PHONE]",
}

E = TypeVar("E")


def luhn_valid(digits: str) -> bool:
    """Luhn checksum of a string of digits (payment cards).

    Examples
    --------
    >>> luhn_valid("4111111111111111"), luhn_valid("4111111111111112")
    (True, False)
    """
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def cpf_valid(digits: str) -> bool:
    """Whether 11 digits are a CPF with correct check digits.

    Repeated digits (``111.111.111-11``) pass the arithmetic but are not issued, so they are invalid.

    Examples
    --------
    >>> cpf_valid("12345678909"), cpf_valid("12345678900"), cpf_valid("11111111111")
    (True, False, False)
    """
    if len(digits) != 11 or not digits.isdigit() or digits == digits[0] * 11:
        return False
    nums = [ord(c) - 48 for c in digits]
    for n in (9, 10):
        check = sum(nums[i] * (n + 1 - i) for i in range(n)) * 10 % 11 % 10
        if check != nums[n]:
            return False
    return True


def cnpj_valid(value: str) -> bool:
    """Whether 14 characters are a CNPJ with correct check digits (numeric or alphanumeric).

    Each character counts as its ASCII code minus 48 (Receita Federal's rule for the alphanumeric
    CNPJ of 2026, which leaves numeric CNPJs unchanged); the last two are digits.

    Examples
    --------
    >>> cnpj_valid("11222333000181"), cnpj_valid("11222333000182"), cnpj_valid("12ABC34501DE35")
    (True, False, True)
    """
    value = value.upper()
    if len(value) != 14 or not value[12:].isdigit() or not value[:12].isalnum() or not value.isascii():
        return False
    if value == value[0] * 14:
        return False
    nums = [ord(c) - 48 for c in value]
    for n in (12, 13):
        weights = [(n - 7 - i) if i < n - 8 else (n + 1 - i) for i in range(n)]
        r = sum(w * v for w, v in zip(weights, nums, strict=False)) % 11
        if nums[n] != (0 if r < 2 else 11 - r):
            return False
    return True


#: First digits (or two) of NIFs/NIPCs Portugal issues: people (1-3), non-residents (45),
#: companies (5), public bodies (6), estates and funds (70-79), sole traders (8), others (9x).
_NIF_PREFIXES = ("1", "2", "3", "45", "5", "6", "70", "71", "72", "74", "75", "77", "79", "8", "90", "91", "98", "99")


def nif_valid(digits: str) -> bool:
    """Whether 9 digits are a Portuguese NIF/NIPC: an issued prefix and a valid mod-11 check digit.

    Examples
    --------
    >>> nif_valid("123456789"), nif_valid("123456780"), nif_valid("412345678")
    (True, False, False)
    """
    if len(digits) != 9 or not digits.isdigit() or not digits.startswith(_NIF_PREFIXES):
        return False
    r = sum(int(d) * (9 - i) for i, d in enumerate(digits[:8])) % 11
    return int(digits[8]) == (0 if r < 2 else 11 - r)


#: IBAN length per country (ISO 13616 registry, SWIFT release 2025), for the countries most likely
#: in this company's texts and every SEPA country.
IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AO": 25, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BR": 29, "CH": 21, "CR": 22, "CV": 25, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20,
    "EG": 29, "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27,
    "GT": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30,
    "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MD": 24, "ME": 22,
    "MK": 19, "MR": 27, "MT": 31, "MU": 30, "MZ": 25, "NL": 18, "NO": 15, "PK": 24, "PL": 28, "PS": 29,
    "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24, "SC": 31, "SE": 24, "SI": 19, "SK": 24, "SM": 27,
    "ST": 25, "SV": 28, "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}  # fmt: skip


def iban_valid(value: str) -> bool:
    """Whether a string (spaces ignored) is an IBAN: known country, its length, mod 97 equal to 1.

    Examples
    --------
    >>> iban_valid("PT50 0002 0123 1234 5678 9015 4"), iban_valid("PT50 0002 0123 1234 5678 9015 5")
    (True, False)
    >>> iban_valid("GB82 WEST 1234 5698 7654 32")
    True
    """
    iban = value.replace(" ", "").upper()
    if IBAN_LENGTHS.get(iban[:2]) != len(iban) or not iban[2:4].isdigit() or not iban.isalnum():
        return False
    rearranged = iban[4:] + iban[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


def _ssn_valid(area: str, group: str, serial: str) -> bool:
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


# Emails: a pragmatic subset of RFC 5322 (no quoted local parts); \w admits accented names.
_EMAIL = re.compile(r"(?<![\w.%+-])[\w.%+-]+@[\w-]+(?:\.[\w-]+)*\.[^\W\d_]{2,}(?![\w-])")

# Cards: contiguous, or the groupings printed on cards with one consistent separator. Not after a
# letter (the digits of an IBAN such as NL91ABNA0417164300 are not a card), nor
# a "+" (that is an international phone) nor inside a longer digit run. The first digit is a
# major industry identifier of issued cards (2-6: Mastercard, Amex, Diners, JCB, Visa, Discover,
# UnionPay, Maestro), which spares millisecond timestamps (1...) and many zero-padded ids; the
# grouped 4-6-5 / 4-6-4 shapes are Amex and Diners, both starting with 3.
_CARD = re.compile(
    r"(?<![\w+])(?:"
    r"[2-6]\d{12,18}"
    r"|[2-6]\d{3}(?P<s1>[ -])\d{4}(?P=s1)\d{4}(?P=s1)\d{4}(?P<tail>(?P=s1)\d{1,3})?"
    r"|3\d{3}(?P<s2>[ -])\d{6}(?P=s2)\d{4,5}"
    r")(?!\d)"
)

# CPF: formatted always; "ddddddddd-dd" and bare 11 digits only with valid check digits (in the
# callback), and not when they look like part of an amount ("12345678909,00") or follow a "+".
_CPF = re.compile(
    r"(?<!\d)(?P<formatted>\d{3}\.\d{3}\.\d{3}-\d{2})(?!\d)"
    r"|(?<![\d+.,])(?P<plain>\d{9}-?\d{2})(?![\d-])(?![.,]\d)"
)

_SSN = re.compile(r"(?<![\d-])(\d{3})-(\d{2})-(\d{4})(?![\d-])")

_UUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
# PIX: the key follows the word "pix" ("chave PIX: ...", "meu pix é ...", "PIX key ...").
_PIX = re.compile(
    r"(?i:(?<![\w])pix\b)(?P<gap>[^\n\d]{0,30}?)"
    r"(?P<key>(?<![\w-])" + _UUID + r"(?![\w-])|(?<![\w+])\(?\d{2}\)? ?9?\d{4}-?\d{4}(?![\w-]))"
)

# IBAN: country, check digits, then the BBAN contiguous or in groups of 4 (the last group shorter).
_IBAN = re.compile(
    r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?:[A-Z0-9]{11,30}|(?: [A-Z0-9]{4}){2,7}(?: [A-Z0-9]{1,3})?)(?![A-Za-z0-9])"
)

# CNPJ: formatted always (digits, or the 2026 alphanumeric form); 14 bare digits with valid checks.
_CNPJ = re.compile(
    r"(?<![\w.])(?P<formatted>[0-9A-Z]{2}\.[0-9A-Z]{3}\.[0-9A-Z]{3}/[0-9A-Z]{4}-\d{2})(?![\w-])"
    r"|(?<![\d+.,/-])(?P<plain>\d{14})(?!\d)(?![.,]\d)"
)

# RG: the São Paulo-style format, or digits right after the word "RG".
_RG = re.compile(
    r"(?<![\w.])\d{1,2}\.\d{3}\.\d{3}-[\dXx](?![\w-])"
    r"|(?<=\bRG)(?P<sep>[:.]? ?(?:n[º°o]\.? ?)?)(?P<rg>\d{7,9}(?:-[\dXx])?)(?![\w-])"
)

# NIF: after its keyword (also in groups of 3, or with the PT VAT prefix), or 9 bare digits.
_NIF = re.compile(
    r"(?i:\b(?P<kw>NIF|NIPC|contribuinte|VAT)\b[^\n\d]{0,15}?)(?P<ctx>(?:PT ?)?\d{3} ?\d{3} ?\d{3})(?![\w-])"
    r"|(?<![\w+.,/-])(?:PT)?(?P<plain>\d{9})(?![\w-])(?![.,]\d)"
)

_PHONE = re.compile(
    r"(?:"
    # International (E.164: at most 15 digits): "+", then digits or an (area) each after at most
    # one space, dot or dash. One digit per repetition keeps backtracking linear.
    r"(?<![\w+])\+\d(?:[ .-]?\d|[ .-]?\(\d{1,4}\)){6,14}"
    # Brazil with a parenthesised DDD: (11) 91234-5678, (11) 3456-7890, (11)912345678.
    r"|(?<![\w(])\([1-9]{2}\) ?(?:9 ?\d{4}|[2-5]\d{3})[ -]?\d{4}"
    # Brazil, DDD then a mobile with its dash: 11 91234-5678, 11-91234-5678.
    r"|(?<![\w.,/:-])[1-9]{2}[ -]?9\d{4}-\d{4}"
    # Brazil, bare mobile with its dash: 91234-5678 (the leading 9 and the 5-4 shape mark a mobile).
    r"|(?<![\w.,/:-])9\d{4}-\d{4}"
    # US national: (415) 555-0100, 415-555-0100, 415.555.0100.
    r"|(?<![\w(])\(\d{3}\) ?\d{3}-\d{4}"
    r"|(?<![\w.,/:-])\d{3}(?P<sep>[.-])\d{3}(?P=sep)\d{4}"
    r")(?![\w-])(?![.,:/]\d)"
)

_HAS_DIGIT = re.compile(r"\d")
_NON_DIGIT = re.compile(r"\D")


def _card(m: re.Match[str]) -> tuple[str, str] | None:
    text = m.group(0)
    if luhn_valid(_NON_DIGIT.sub("", text)):
        return "card", ""
    tail = m.group("tail")
    # "4111 1111 1111 1111 12/26": the optional fifth group was an expiry month, not card digits.
    if tail and luhn_valid(_NON_DIGIT.sub("", text[: -len(tail)])):
        return "card", tail
    return None


def _cpf(m: re.Match[str]) -> tuple[str, str] | None:
    if m.group("formatted") is not None:
        return "cpf", ""
    return ("cpf", "") if cpf_valid(m.group("plain").replace("-", "")) else None


def _pix(m: re.Match[str]) -> tuple[str, str] | None:
    # The keyword and the words between stay; only the key goes.
    return "pix", ""


def _iban(m: re.Match[str]) -> tuple[str, str] | None:
    text = m.group(0)
    if iban_valid(text):
        return "iban", ""
    # "PT50 ... 9015 4 OK": a trailing group may be the next word, not the IBAN's.
    head, _, tail = text.rpartition(" ")
    if head and iban_valid(head):
        return "iban", " " + tail
    return None


def _cnpj(m: re.Match[str]) -> tuple[str, str] | None:
    if m.group("formatted") is not None:
        return "cnpj", ""
    return ("cnpj", "") if cnpj_valid(m.group("plain")) else None


def _rg(m: re.Match[str]) -> tuple[str, str] | None:
    return "rg", ""


def _nif(m: re.Match[str]) -> tuple[str, str] | None:
    digits = _NON_DIGIT.sub("", m.group("ctx") or m.group("plain"))
    return ("nif", "") if nif_valid(digits) else None


def _ssn(m: re.Match[str]) -> tuple[str, str] | None:
    return ("ssn", "") if _ssn_valid(m.group(1), m.group(2), m.group(3)) else None


def _phone(m: re.Match[str]) -> tuple[str, str] | None:
    return "phone", ""


# (pattern, classifier): the classifier returns (kind, text kept after the placeholder), or None to
# leave the match as it is.
_Classifier = Callable[[re.Match[str]], tuple[str, str] | None]
_PASSES: tuple[tuple[re.Pattern[str], _Classifier], ...] = (
    (_PIX, _pix),
    (_IBAN, _iban),
    (_CNPJ, _cnpj),
    (_CARD, _card),
    (_CPF, _cpf),
    (_RG, _rg),
    (_NIF, _nif),
    (_SSN, _ssn),
    (_PHONE, _phone),
)


def redact_text(text: str) -> tuple[str, dict[str, int]]:
    """Replace personal data in ``text`` with placeholders.

    Parameters
    ----------
    text
        Any text.

    Returns
    -------
    tuple of (str, dict)
        The redacted text, and how many values of each kind were replaced (kinds with none are
        absent, so an empty dict means nothing was found).

    Examples
    --------
    >>> redact_text("card 4111 1111 1111 1111, SSN 123-45-6789, tel (11) 3456-7890")
    ('card [CARD], SSN [SSN], tel [PHONE]', {'card': 1, 'ssn': 1, 'phone': 1})
    >>> redact_text("pedido 12345678900")  # 11 digits, but not a valid CPF
    ('pedido 12345678900', {})
    """
    counts: dict[str, int] = {}
    # Most texts hold neither "@" nor a digit; those skip every regex.
    if "@" in text:
        text, n = _EMAIL.subn(PLACEHOLDERS["email"], text)
        if n:
            counts["email"] = n
    if not _HAS_DIGIT.search(text):
        return text, counts
    for pattern, classify in _PASSES:

        def replace(m: re.Match[str], classify: _Classifier = classify) -> str:
            found = classify(m)
            if found is None:
                return m.group(0)
            kind, kept = found
            counts[kind] = counts.get(kind, 0) + 1
            # Context words matched around the value (the "pix" before a key, "RG: ", "NIF ") stay.
            groups = m.re.groupindex
            value = next((g for g in ("key", "rg", "ctx") if g in groups and m.group(g) is not None), None)
            if value is not None:
                start, end = m.span(value)
                whole = m.group(0)
                return whole[: start - m.start()] + PLACEHOLDERS[kind] + whole[end - m.start() :] + kept
            return PLACEHOLDERS[kind] + kept

        text = pattern.sub(replace, text)
    return text, counts


def _merge(total: dict[str, int], counts: dict[str, int]) -> None:
    for kind, n in counts.items():
        total[kind] = total.get(kind, 0) + n


def redact_value(value: Any, counts: dict[str, int]) -> Any:
    """Redact every string inside a JSON-like value (dicts, lists, tuples), adding to ``counts``.

    Returns a new container where something changed and the very same object where nothing did,
    so untouched metadata is not copied. Keys are kept as they are: they name fields, not people.

    Examples
    --------
    >>> counts = {}
    >>> redact_value({"user": {"emails": ["a@b.io", "c@d.io"]}, "n": 3}, counts), counts
    ({'user': {'emails': ['[EMAIL]', '[EMAIL]']}, 'n': 3}, {'email': 2})
    """
    if isinstance(value, str):
        redacted, found = redact_text(value)
        if not found:
            return value
        _merge(counts, found)
        return redacted
    if isinstance(value, dict):
        out = {k: redact_value(v, counts) for k, v in value.items()}
        return value if all(out[k] is value[k] for k in value) else out
    if isinstance(value, list | tuple):
        items = [redact_value(v, counts) for v in value]
        if all(a is b for a, b in zip(items, value, strict=True)):
            return value
        return type(value)(items) if isinstance(value, tuple) else items
    return value


def _redact_model_extra(model: Any, counts: dict[str, int]) -> dict[str, Any]:
    # Events, messages and passages allow unknown fields; a producer may put text there too.
    extra = model.__pydantic_extra__ or {}
    update = {}
    for name, value in extra.items():
        new = redact_value(value, counts)
        if new is not value:
            update[name] = new
    return update


def _redact_message(message: ChatMessage, counts: dict[str, int]) -> ChatMessage:
    found: dict[str, int] = {}
    if isinstance(message.content, str):
        content: Any = redact_value(message.content, found)
    else:  # multimodal parts: the text of each part (media are only hashes, never text)
        content = [p.model_copy(update={"text": redact_value(p.text, found)}) if p.text else p for p in message.content]
    update = _redact_model_extra(message, found)
    if not found:
        return message
    _merge(counts, found)
    return message.model_copy(update={"content": content, **update})


def _redact_passage(passage: RetrievedPassage, counts: dict[str, int]) -> RetrievedPassage:
    found: dict[str, int] = {}
    text = redact_value(passage.text, found)
    update = _redact_model_extra(passage, found)
    if not found:
        return passage
    _merge(counts, found)
    return passage.model_copy(update={"text": text, **update})


def redact_event(event: E) -> tuple[E, dict[str, int]]:
    """Redact personal data in an event's free text; the input is never modified.

    Covered: for :class:`~atalaia.events.InferenceEvent` every message's content, ``response``,
    ``reference``, every retrieved passage's ``text``; for :class:`~atalaia.events.FeedbackEvent`
    ``corrected_answer`` and ``comment``; for both, every string inside ``metadata`` (recursively)
    and inside unknown extra fields (of the event, its messages and passages). Identifiers
    (``service``, ``model_version``, ``request_id``, passage ``id``) are kept: they are needed to
    join events and are not free text. Other event types hold no user text and come back as they
    are.

    Parameters
    ----------
    event
        Any event model of :mod:`atalaia.events`.

    Returns
    -------
    tuple of (event, dict)
        A new event (a ``model_copy``) for inference and feedback events, with
        ``metadata["pii_redacted"] = {kind: count}`` added when anything was redacted (added to
        the counts already there, if the event was redacted before); and the counts.

    Examples
    --------
    >>> ev = InferenceEvent(service="svc", model_version="m@1",
    ...     messages=[ChatMessage(role="user", content="I am ana@example.com")], response="Hi Ana",
    ...     latency_ms=1.0, prompt_tokens=1, completion_tokens=1, cost=0.0)
    >>> out, counts = redact_event(ev)
    >>> out.messages[0].content, out.metadata, counts
    ('I am [EMAIL]', {'pii_redacted': {'email': 1}}, {'email': 1})
    >>> ev.messages[0].content
    'I am ana@example.com'
    """
    counts: dict[str, int] = {}
    update: dict[str, Any] = {}
    target: InferenceEvent | FeedbackEvent
    if isinstance(event, InferenceEvent):
        target = event
        update["messages"] = [_redact_message(m, counts) for m in event.messages]
        update["context"] = [_redact_passage(p, counts) for p in event.context]
        fields: tuple[str, ...] = ("response", "reference")
    elif isinstance(event, FeedbackEvent):
        target = event
        fields = ("corrected_answer", "comment")
    else:
        return event, counts
    for name in fields:
        value = getattr(target, name)
        new = redact_value(value, counts)
        if new is not value:
            update[name] = new
    update.update(_redact_model_extra(target, counts))
    metadata = redact_value(target.metadata, counts)
    if counts:
        metadata = dict(metadata)  # never the input's dict: the marker must not land on the original
        previous = metadata.get("pii_redacted")
        marker = dict(previous) if isinstance(previous, dict) else {}
        _merge(marker, counts)
        metadata["pii_redacted"] = marker
    # Fresh top-level containers even when nothing changed: code that later appends to the copy's
    # messages or metadata must not reach into the caller's event.
    update["metadata"] = dict(metadata) if metadata is target.metadata else metadata
    return cast(E, target.model_copy(update=update)), counts
