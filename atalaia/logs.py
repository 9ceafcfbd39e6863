"""Structured logging: one JSON object per line when stderr is not a TTY, readable text when it is."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime", "taskName"}
_SECRET_WORDS = ("password", "token", "secret", "authorization")


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    extras = {}
    for key, value in record.__dict__.items():
        if key in _STANDARD or key.startswith("_"):
            continue
        # Secrets never reach a log line, whatever a caller passes.
        extras[key] = "<hidden>" if any(w in key.lower() for w in _SECRET_WORDS) else value
    return extras


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON line with its ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        payload.update(_extras(record))
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


class TextFormatter(logging.Formatter):
    """Human-readable line with ``key=value`` extras, for terminals."""

    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(f"{k}={v}" for k, v in _extras(record).items())
        line = f"{self.formatTime(record, '%H:%M:%S')} {record.levelname:<7} {record.name}: {record.getMessage()}"
        line = f"{line} {extras}" if extras else line
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


NOISY_LOGGERS = ("kafka", "aiokafka", "faust", "mode", "httpx", "urllib3", "alembic")
# kafka-python logs every refused connection attempt as an ERROR (about 30 lines while a broker
# that was just started comes up). The client retries them, and Atalaia reports the outcome itself
# ("kafka unreachable; spooling events to disk", a failed start): they are warnings.
# aiokafka (faust's client) logs an ERROR at a worker's first start on a fresh namespace: faust's
# leader-assignor topic is created during the first rebalance, after the metadata it checks was
# fetched; faust itself then says "Ignoring missing topic" and the worker runs normally.
KAFKA_CONNECTION_LOGGERS = (
    "kafka.net.connection",
    "kafka.net.manager",
    "kafka.conn",
    "kafka.client_async",
    "aiokafka.cluster",
)


_RETRIED_SIGNS = (
    "KafkaConnectionError",
    "ECONNREFUSED",
    "Connection refused",
    "Unable to bootstrap",
    "__assignor-__leader not found in cluster metadata",
)


class RetriedConnectionErrors(logging.Filter):
    """Demote Kafka clients' errors that are retried or benign (connection refused or lost; faust's
    assignor topic missing at a first start) to WARNING.

    >>> rec = logging.LogRecord("kafka.net.manager", logging.ERROR, "", 0,
    ...     "Connection failed: KafkaConnectionError: 111 ECONNREFUSED", None, None)
    >>> RetriedConnectionErrors().filter(rec), rec.levelname
    (True, 'WARNING')
    >>> rec = logging.LogRecord("aiokafka.cluster", logging.ERROR, "", 0,
    ...     "Topic %s not found in cluster metadata", ("w1-__assignor-__leader",), None)
    >>> RetriedConnectionErrors().filter(rec), rec.levelname
    (True, 'WARNING')
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.WARNING:
            text = record.getMessage()
            if any(sign in text for sign in _RETRIED_SIGNS):
                record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def logging_dict_config(level: str = "INFO", json_lines: bool | None = None) -> dict[str, Any]:
    """The same set-up as :func:`configure_logging`, as a ``logging.config.dictConfig`` mapping.

    For frameworks that insist on configuring logging themselves (faust's worker).
    """
    if json_lines is None:
        json_lines = not sys.stderr.isatty()
    quiet = logging.getLevelName(max(logging.WARNING, logging.getLevelName(level)))
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"atalaia": {"()": JsonFormatter if json_lines else TextFormatter}},
        "handlers": {
            "stderr": {"class": "logging.StreamHandler", "formatter": "atalaia", "stream": "ext://sys.stderr"}
        },
        "filters": {"retried": {"()": RetriedConnectionErrors}},
        "root": {"level": level, "handlers": ["stderr"]},
        "loggers": {
            **{name: {"level": quiet} for name in NOISY_LOGGERS},
            **{name: {"filters": ["retried"]} for name in KAFKA_CONNECTION_LOGGERS},
        },
    }


class CurrentStderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is when a record is emitted, not the stream it was at set-up
    (as the standard library's last-resort handler does): a CLI runner or a test harness that
    swaps stderr and closes its copy must not leave the root logger writing to a closed file."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property
    def stream(self):  # type: ignore[no-untyped-def,override]
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:  # type: ignore[no-untyped-def]
        pass  # always the current sys.stderr


def configure_logging(level: str = "INFO", json_lines: bool | None = None) -> None:
    """Install the Atalaia formatter on the root logger (idempotent)."""
    if json_lines is None:
        json_lines = not sys.stderr.isatty()
    handler = CurrentStderrHandler()
    handler.setFormatter(JsonFormatter() if json_lines else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_atalaia", False):
            root.removeHandler(old)
    handler._atalaia = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    # Client libraries are chatty at INFO; their warnings still come through.
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
    for name in KAFKA_CONNECTION_LOGGERS:
        client_logger = logging.getLogger(name)
        if not any(isinstance(f, RetriedConnectionErrors) for f in client_logger.filters):
            client_logger.addFilter(RetriedConnectionErrors())
