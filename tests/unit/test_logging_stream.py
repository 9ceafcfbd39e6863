"""The root logger writes to the current stderr, so a swapped and closed stream is never hit."""

from __future__ import annotations

import io
import json
import logging

import pytest

from atalaia.logs import configure_logging


def test_logs_follow_stderr_after_the_stream_they_started_on_is_closed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    swapped = io.StringIO()
    monkeypatch.setattr("sys.stderr", swapped)  # a CLI runner's stderr while the command runs
    configure_logging("INFO", json_lines=True)
    logging.getLogger("atalaia.test").info("during")
    monkeypatch.undo()
    swapped.close()  # the runner is done with its copy
    logging.getLogger("atalaia.test").info("after")  # a "--- Logging error ---" before the fix
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    assert [line["event"] for line in lines] == ["after"]
