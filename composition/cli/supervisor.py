"""A small process supervisor: runs Atalaia services as child processes and restarts the crashed."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass
class Child:
    """One supervised service."""

    name: str
    argv: list[str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    next_start: float = 0.0
    history: list[float] = field(default_factory=list)


class Supervisor:
    """Starts ``atalaia <service>`` children, restarts them with backoff, stops them together.

    Output of each child goes to ``<logs_dir>/<name>.log``. ``env`` is added to every child's
    environment, ``service_env[name]`` to that one child's (e.g. its own torch thread count).
    """

    def __init__(
        self,
        services: list[str],
        logs_dir: Path,
        env: dict[str, str] | None = None,
        service_env: dict[str, dict[str, str]] | None = None,
    ) -> None:
        logs_dir.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, **(env or {})}
        self.service_env = service_env or {}
        self.children = [
            Child(name, [sys.executable, "-m", "composition.cli.main", name], logs_dir / f"{name}.log")
            for name in services
        ]
        self._stopping = False

    def _spawn(self, child: Child) -> None:
        fh = child.log_path.open("ab")
        child.proc = subprocess.Popen(
            child.argv,
            stdout=fh,
            stderr=subprocess.STDOUT,
            env={**self.env, **self.service_env.get(child.name, {})},
            start_new_session=True,
        )
        fh.close()
        child.history.append(time.monotonic())
        log.info("service started", extra={"service": child.name, "pid": child.proc.pid, "log": str(child.log_path)})

    def start(self) -> None:
        """Start every child."""
        for child in self.children:
            self._spawn(child)

    def check(self) -> list[str]:
        """Restart children that exited (with exponential backoff); return the names restarted."""
        restarted = []
        now = time.monotonic()
        for child in self.children:
            if self._stopping or child.proc is None or child.proc.poll() is None:
                continue
            if child.next_start == 0.0:
                delay = min(2 ** min(child.restarts, 5), 30)
                child.next_start = now + delay
                log.error(
                    "service exited; restarting",
                    extra={
                        "service": child.name,
                        "code": child.proc.returncode,
                        "retry_in_s": delay,
                        "log": str(child.log_path),
                    },
                )
            elif now >= child.next_start:
                child.restarts += 1
                child.next_start = 0.0
                self._spawn(child)
                restarted.append(child.name)
        return restarted

    def run(self, until: float | None = None) -> None:
        """Supervise until SIGINT/SIGTERM (or ``until``, a monotonic deadline), then stop all."""

        def _handler(signum: int, _frame: object) -> None:
            self._stopping = True

        previous = {s: signal.signal(s, _handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            self.start()
            while not self._stopping and (until is None or time.monotonic() < until):
                self.check()
                time.sleep(0.5)
        finally:
            self.stop()
            for s, h in previous.items():
                signal.signal(s, h)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM every child, wait, then SIGKILL the stragglers."""
        self._stopping = True
        for child in self.children:
            if child.proc is not None and child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for child in self.children:
            if child.proc is None:
                continue
            try:
                child.proc.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                log.warning("service did not stop; killing", extra={"service": child.name})
                os.killpg(child.proc.pid, signal.SIGKILL)
                child.proc.wait()
