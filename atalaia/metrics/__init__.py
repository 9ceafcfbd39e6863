"""Pure metric functions: no I/O, no Kafka, testable on plain values."""

from __future__ import annotations
