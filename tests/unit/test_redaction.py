from __future__ import annotations

import uuid

import pytest

from atalaia.events import AlertEvent, ChatMessage, FeedbackEvent, InferenceEvent, RetrievedPassage, utcnow
from atalaia.redaction import cnpj_valid, iban_valid, nif_valid
from producers.redaction import cpf_valid, luhn_valid, redact_event, redact_text


@pytest.mark.parametrize(
    "text",
    [
        "ana@example.com",
        "ana.silva+rh@mail.empresa.com.br",
        "joão_1@exemplo.pt",
        "12345678909@example.com",  # CPF-looking local part: one email, not a CPF
    ],
)
def test_email(text: str) -> None:
    assert redact_text(f"write to {text}.") == ("write to [EMAIL].", {"email": 1})


@pytest.mark.parametrize(
    "text",
    [
        "+55 11 91234-5678",
        "+55 (11) 91234-5678",
        "+5511912345678",
        "(11) 91234-5678",
        "(11) 3456-7890",
        "(11)912345678",
        "11 91234-5678",
        "91234-5678",
        "+351 912 345 678",
        "+351 212 345 678",
        "+1 415 555 0100",
        "+1 (415) 555-0100",
        "+44 20 7946 0958",
        "+49-30-1234567",
        "(415) 555-0100",
        "415-555-0100",
        "+12345678909",  # valid CPF digits after a "+": a phone, not a CPF
    ],
)
def test_phone(text: str) -> None:
    assert redact_text(f"ligue {text} hoje") == ("ligue [PHONE] hoje", {"phone": 1})


@pytest.mark.parametrize(
    "text",
    [
        "123.456.789-09",
        "123.456.789-00",  # formatted: redacted even with wrong check digits
        "12345678909",
        "123456789-09",
        "52998224725",
    ],
)
def test_cpf(text: str) -> None:
    assert redact_text(f"CPF: {text}.") == ("CPF: [CPF].", {"cpf": 1})


def test_cpf_check_digits() -> None:
    assert cpf_valid("12345678909") and cpf_valid("52998224725")
    assert not cpf_valid("12345678900")
    assert not cpf_valid("11111111111")  # passes the arithmetic but is never issued
    assert not cpf_valid("1234567890")
    for text in ("pedido 12345678900", "pedido 123456789-00", "id 11111111111"):
        assert redact_text(text) == (text, {})


@pytest.mark.parametrize("text", ["123-45-6789", "078-05-1120"])
def test_ssn(text: str) -> None:
    assert redact_text(f"SSN {text}") == ("SSN [SSN]", {"ssn": 1})


@pytest.mark.parametrize("text", ["000-12-3456", "666-12-3456", "900-12-3456", "123-00-4567", "123-45-0000"])
def test_invalid_ssn_is_kept(text: str) -> None:
    assert redact_text(text) == (text, {})


@pytest.mark.parametrize(
    "text",
    [
        "4111111111111111",
        "4111 1111 1111 1111",
        "4111-1111-1111-1111",
        "5555 5555 5555 4444",
        "3782 822463 10005",  # Amex 4-6-5
        "378282246310005",
        "3056 930902 5904",  # Diners 4-6-4
        "6011111111111117",
        "4222222222222",  # 13 digits
        "6250 9410 0652 8592 3",  # 17 digits, 4-4-4-4-1
    ],
)
def test_card(text: str) -> None:
    assert redact_text(f"cartão {text} ok") == ("cartão [CARD] ok", {"card": 1})


def test_luhn() -> None:
    assert luhn_valid("4111111111111111") and luhn_valid("378282246310005")
    assert not luhn_valid("4111111111111112")
    for text in ("4111 1111 1111 1112", "4111-1111-1111-1112", "4111111111111112"):
        assert redact_text(text) == (text, {})


@pytest.mark.parametrize(
    "text",
    [
        "BRL 5,000",
        "R$ 1.234.567,89",
        "USD 12,345,678.90",
        "2026-11-29",
        "29/11/2026",
        "2026-11-29T14:30:00Z",
        "14:30",
        "14:30:59",
        "section 1.2",
        "section 3.4.1.2",
        "form HR-07",
        "2024-2025",
        "CEP 01310-100",
        "192.168.0.1",
        "version 1.2.3",
        "ticket #4521",
        "1732890000000",  # epoch milliseconds (13 digits, and Luhn-valid)
        "12345678909,00",  # an amount, not a CPF
        "v2.1-rc3",
        "Art. 7º, XVII, da CF/88",
        "912 345 678",  # Portuguese national number without +351: too close to an amount
    ],
)
def test_must_not_redact(text: str) -> None:
    assert redact_text(f"Note: {text}.") == (f"Note: {text}.", {})


def test_overlaps_resolve_by_order() -> None:
    # A card's 16 digits hold 11-digit runs (CPF-like) and phone-like groups: one card.
    assert luhn_valid("4111111111111111")
    assert redact_text("4111 1111 1111 1111") == ("[CARD]", {"card": 1})
    # A card followed by an expiry keeps the expiry.
    assert redact_text("4111 1111 1111 1111 12/26") == ("[CARD] 12/26", {"card": 1})
    # E.164 phone of 13 digits: the "+" says phone, although the digits might pass Luhn.
    assert redact_text("+5511912345678") == ("[PHONE]", {"phone": 1})
    # An email holding a CPF and a phone-looking part is one email.
    assert redact_text("123.456.789-09@x.io 91234-5678@y.io") == ("[EMAIL] [EMAIL]", {"email": 2})
    # SSN and the US phone shape differ by one group; neither eats the other.
    assert redact_text("SSN 123-45-6789, tel 415-555-0100") == ("SSN [SSN], tel [PHONE]", {"ssn": 1, "phone": 1})
    # A date next to a phone.
    assert redact_text("2026-11-29 (11) 91234-5678") == ("2026-11-29 [PHONE]", {"phone": 1})


def test_counts_add_up() -> None:
    text = (
        "a@b.io c@d.io, +55 11 91234-5678, (11) 3456-7890, 123.456.789-09, 52998224725, "
        "123-45-6789, 4111111111111111, pedido 12345678900"
    )
    redacted, counts = redact_text(text)
    assert counts == {"email": 2, "phone": 2, "cpf": 2, "ssn": 1, "card": 1}
    assert redacted == ("[EMAIL] [EMAIL], [PHONE], [PHONE], [CPF], [CPF], [SSN], [CARD], pedido 12345678900")
    assert redact_text("") == ("", {})
    assert redact_text("no pii at all") == ("no pii at all", {})


PII = "ana@example.com"


def _inference(**overrides: object) -> InferenceEvent:
    fields: dict[str, object] = {
        "service": "svc",
        "model_version": "m@1",
        "messages": [
            ChatMessage(role="system", content="You are HR."),
            ChatMessage.model_validate({"role": "user", "content": f"I am {PII}, CPF 123.456.789-09", "name": PII}),
        ],
        "response": "Hello, call +55 11 91234-5678",
        "context": [
            RetrievedPassage(id="p1", text="Policy 1.2: 30 days.", score=0.9),
            RetrievedPassage(id="p2", text=f"Contact {PII}"),
        ],
        "latency_ms": 1.0,
        "prompt_tokens": 1,
        "completion_tokens": 1,
        "cost": 0.0,
        "reference": "Card 4111 1111 1111 1111",
        "request_id": "user-42",
        "metadata": {"user": {"email": PII, "tags": ["x", "ssn 123-45-6789"]}, "max_tokens": 64},
        "client_note": f"from {PII}",  # an unknown extra field
    }
    fields.update(overrides)
    return InferenceEvent(**fields)  # type: ignore[arg-type]


def test_redact_inference_event_covers_every_field_and_does_not_mutate() -> None:
    ev = _inference()
    before = ev.model_dump()
    out, counts = redact_event(ev)
    assert ev.model_dump() == before
    assert out is not ev and out.event_id == ev.event_id and out.request_id == "user-42"
    assert out.messages[0] is ev.messages[0]  # untouched messages are shared, not copied
    assert out.messages[1].content == "I am [EMAIL], CPF [CPF]"
    assert out.messages[1].model_extra == {"name": "[EMAIL]"}
    assert out.response == "Hello, call [PHONE]"
    assert out.reference == "Card [CARD]"
    assert [p.text for p in out.context] == ["Policy 1.2: 30 days.", "Contact [EMAIL]"]
    assert out.metadata["user"] == {"email": "[EMAIL]", "tags": ["x", "ssn [SSN]"]}
    assert out.metadata["max_tokens"] == 64
    assert out.model_extra is not None and out.model_extra["client_note"] == "from [EMAIL]"
    expected = {"email": 5, "cpf": 1, "phone": 1, "card": 1, "ssn": 1}
    assert counts == expected
    assert out.metadata["pii_redacted"] == expected
    assert "pii_redacted" not in ev.metadata
    # The result still serialises and parses as an event.
    from atalaia.events import parse_event

    assert parse_event(out.to_json()).response == "Hello, call [PHONE]"


def test_redact_event_without_pii_adds_no_marker_and_shares_nothing_mutable() -> None:
    ev = _inference(
        messages=[ChatMessage(role="user", content="How many vacation days?")],
        response="30.",
        context=[],
        reference=None,
        metadata={"k": "v"},
        client_note="fine",
    )
    out, counts = redact_event(ev)
    assert counts == {} and out.metadata == {"k": "v"}
    out.metadata["added"] = 1
    out.messages.append(ChatMessage(role="assistant", content="x"))
    assert ev.metadata == {"k": "v"} and len(ev.messages) == 1


def test_redacting_twice_is_stable_and_accumulates_marker() -> None:
    once, _ = redact_event(_inference())
    twice, counts = redact_event(once)
    assert counts == {} and twice.model_dump() == once.model_dump()
    ev = _inference(metadata={"pii_redacted": {"email": 2}, "note": PII})
    out, _ = redact_event(ev)
    assert out.metadata["pii_redacted"]["email"] == 2 + 5
    assert ev.metadata["pii_redacted"] == {"email": 2}


def test_redact_feedback_event() -> None:
    ev = FeedbackEvent(
        inference_event_id=uuid.uuid4(),
        rating=-1,
        corrected_answer="Call (11) 3456-7890",
        comment=f"I am {PII}",
        metadata={"nested": [{"cpf": "12345678909"}]},
    )
    out, counts = redact_event(ev)
    assert (out.corrected_answer, out.comment) == ("Call [PHONE]", "I am [EMAIL]")
    assert out.metadata["nested"] == [{"cpf": "[CPF]"}]
    assert counts == {"phone": 1, "email": 1, "cpf": 1} == out.metadata["pii_redacted"]
    assert ev.comment == f"I am {PII}" and "pii_redacted" not in ev.metadata
    empty = FeedbackEvent(inference_event_id=uuid.uuid4(), rating=1)
    out, counts = redact_event(empty)
    assert counts == {} and out.corrected_answer is None and out.metadata == {}


def test_other_events_pass_through() -> None:
    alert = AlertEvent(alert_id=uuid.uuid4(), fingerprint="f", rule="r", state="firing", started_at=utcnow())
    out, counts = redact_event(alert)
    assert out is alert and counts == {}


# -- CNPJ, RG, NIF, IBAN, PIX (issue 20) ----------------------------------------------------------


def test_cnpj() -> None:
    # A formatted CNPJ is one whatever its check digits; bare 14 digits only with valid ones.
    assert redact_text("cnpj 11.222.333/0001-81") == ("cnpj [CNPJ]", {"cnpj": 1})
    assert redact_text("CNPJ 12.345.678/0001-95.") == ("CNPJ [CNPJ].", {"cnpj": 1})
    assert redact_text("CNPJ 11222333000181") == ("CNPJ [CNPJ]", {"cnpj": 1})
    assert redact_text("pedido 11222333000182") == ("pedido 11222333000182", {})
    # The alphanumeric CNPJ (from July 2026): Receita Federal's own example.
    assert cnpj_valid("12ABC34501DE35") and not cnpj_valid("12ABC34501DE36")
    assert redact_text("CNPJ 12.ABC.345/01DE-35") == ("CNPJ [CNPJ]", {"cnpj": 1})
    assert not cnpj_valid("00000000000000")


def test_rg() -> None:
    assert redact_text("RG 12.345.678-9") == ("RG [RG]", {"rg": 1})
    assert redact_text("rg 1.234.567-X emitido") == ("rg [RG] emitido", {"rg": 1})
    assert redact_text("RG: 123456789") == ("RG: [RG]", {"rg": 1})
    assert redact_text("meu RG nº 12345678-X") == ("meu RG nº [RG]", {"rg": 1})
    # Bare digits without the word are not an RG (nor anything else here).
    assert redact_text("ticket 12345678") == ("ticket 12345678", {})


def test_nif() -> None:
    assert nif_valid("123456789") and not nif_valid("123456780") and not nif_valid("412345678")
    assert redact_text("NIF 123 456 789") == ("NIF [NIF]", {"nif": 1})
    assert redact_text("contribuinte n.º PT123456789") == ("contribuinte n.º [NIF]", {"nif": 1})
    assert redact_text("NIF: 501964843") == ("NIF: [NIF]", {"nif": 1})
    assert redact_text("NIF: 123456780") == ("NIF: 123456780", {})  # wrong check digit
    # Bare: redacted when valid (1 in 11 arbitrary numbers with an issued prefix are).
    assert redact_text("nº 123456789") == ("nº [NIF]", {"nif": 1})
    assert redact_text("nº 123456788") == ("nº 123456788", {})


def test_iban() -> None:
    assert iban_valid("PT50000201231234567890154") and not iban_valid("PT50000201231234567890155")
    assert redact_text("IBAN PT50 0002 0123 1234 5678 9015 4 ok") == ("IBAN [IBAN] ok", {"iban": 1})
    assert redact_text("IBAN PT50000201231234567890154.") == ("IBAN [IBAN].", {"iban": 1})
    assert redact_text("GB82 WEST 1234 5698 7654 32") == ("[IBAN]", {"iban": 1})
    assert redact_text("BR15 0000 0000 0000 1093 2840 814P 2") == ("[IBAN]", {"iban": 1})
    # Wrong check digits, an unknown country or the wrong length: left alone.
    for text in ("PT51 0002 0123 1234 5678 9015 4", "ZZ50 0002 0123 1234 5678 9015 4", "PT50 0002 0123"):
        assert redact_text(text) == (text, {})


def test_pix_keys() -> None:
    uuid = "123e4567-e89b-42d3-a456-426614174000"
    assert redact_text(f"chave pix: {uuid}") == ("chave pix: [PIX]", {"pix": 1})
    assert redact_text(f"PIX key {uuid.upper()}") == ("PIX key [PIX]", {"pix": 1})
    assert redact_text("meu pix é 11912345678") == ("meu pix é [PIX]", {"pix": 1})
    # A UUID without the word is an id, not a key.
    assert redact_text(f"request {uuid}") == (f"request {uuid}", {})
    # Keys that are a CPF, a CNPJ, an email or a +55 phone are redacted as those kinds.
    assert redact_text("pix: 123.456.789-09") == ("pix: [CPF]", {"cpf": 1})
    assert redact_text("pix ana@example.com") == ("pix [EMAIL]", {"email": 1})
    assert redact_text("pix +55 11 91234-5678") == ("pix [PHONE]", {"phone": 1})
