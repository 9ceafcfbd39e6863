"""PII redaction for events before they leave the process (LGPD / GDPR data minimisation).

Personal data a user types into a chat (an email, a phone number, a CPF, a card number) would
otherwise be copied to Kafka, the metric store and retraining sets. :func:`redact_event` replaces
each such value with a placeholder naming its kind, and records how many of each it replaced.

Kinds, in the order they are applied (each pass sees the previous passes' placeholders, which hold
no digits, so an earlier kind always wins an overlap):

1. ``email`` → ``[EMAIL]``; first, because addresses may hold digit runs that look like a CPF
   or a phone (``12345678909@example.com`` is one email, not a CPF).
2. ``card`` → ``[CARD]``: 13–19 digits starting with 2–6, contiguous or in the printed groups
   (4-4-4-4[-1..3], Amex 4-6-5, Diners 4-6-4) with spaces or dashes, and Luhn-valid. Before
   phones and CPFs so a card's digits are never split into a "phone" and a remainder. Not after
   a ``+``: that is a phone.
3. ``cpf`` → ``[CPF]``: ``ddd.ddd.ddd-dd`` always (the format alone says CPF); ``ddddddddd-dd`` and
   bare 11 digits only with valid check digits, so that order numbers and bare 11-digit phone
   numbers are left alone (about 1 in 100 arbitrary 11-digit numbers still pass the check).
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

__all__ = ["PLACEHOLDERS", "cpf_valid", "luhn_valid", "redact_event", "redact_text", "redact_value"]

PLACEHOLDERS = {
    "email": "[EMAIL]",
    "card": "[CARD]",
    "cpf": "[CPF]",
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


def _ssn_valid(area: str, group: str, serial: str) -> bool:
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


# Emails: a pragmatic subset of RFC 5322 (no quoted local parts); \w admits accented names.
_EMAIL = re.compile(r"(?<![\w.%+-])[\w.%+-]+@[\w-]+(?:\.[\w-]+)*\.[^\W\d_]{2,}(?![\w-])")

# Cards: contiguous, or the groupings printed on cards with one consistent separator. Not after
# a "+" (that is an international phone) nor inside a longer digit run. The first digit is a
# major industry identifier of issued cards (2-6: Mastercard, Amex, Diners, JCB, Visa, Discover,
# UnionPay, Maestro), which spares millisecond timestamps (1...) and many zero-padded ids; the
# grouped 4-6-5 / 4-6-4 shapes are Amex and Diners, both starting with 3.
_CARD = re.compile(
    r"(?<![\d+])(?:"
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


def _ssn(m: re.Match[str]) -> tuple[str, str] | None:
    return ("ssn", "") if _ssn_valid(m.group(1), m.group(2), m.group(3)) else None


def _phone(m: re.Match[str]) -> tuple[str, str] | None:
    return "phone", ""


# (pattern, classifier): the classifier returns (kind, text kept after the placeholder), or None to
# leave the match as it is.
_Classifier = Callable[[re.Match[str]], tuple[str, str] | None]
_PASSES: tuple[tuple[re.Pattern[str], _Classifier], ...] = (
    (_CARD, _card),
    (_CPF, _cpf),
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
