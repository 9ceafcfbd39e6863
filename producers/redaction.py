"""PII redaction: the code lives in the kernel, :mod:`atalaia.redaction`.

The producer SDK redacts events before they leave the process, and the retraining data set
(``retrain/``) redacts feedback before training; services may import only the kernel, so the pure
functions were moved there. This module keeps the old import path working.
"""

from __future__ import annotations

from atalaia.redaction import PLACEHOLDERS, cpf_valid, luhn_valid, redact_event, redact_text, redact_value

__all__ = ["PLACEHOLDERS", "cpf_valid", "luhn_valid", "redact_event", "redact_text", "redact_value"]
