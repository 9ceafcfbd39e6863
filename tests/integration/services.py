"""Running Atalaia services as real child processes in integration tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from atalaia.settings import Settings
from tests.conftest import settings_env


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.25) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


@contextmanager
def service(
    name: str, settings: Settings, extra_env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``atalaia <name>`` with ``settings`` until the block ends; its log is in ``home/logs``."""
    logs = Path(settings.home) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"{name}.log"
    env = settings_env(settings) | (extra_env or {})
    with log_path.open("ab") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "composition.cli.main", name],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def log_text(settings: Settings, name: str) -> str:
    """The log of a service started by :func:`service`."""
    path = Path(settings.home) / "logs" / f"{name}.log"
    return path.read_text(errors="replace") if path.exists() else ""
