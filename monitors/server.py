"""Serves the monitor's web app with uvicorn in a background thread, beside the evaluation loop."""

from __future__ import annotations

import logging
import threading
import time

import uvicorn
from fastapi import FastAPI

log = logging.getLogger(__name__)


class WebServer:
    """A uvicorn server on its own thread; :meth:`stop` shuts it down gracefully.

    uvicorn installs signal handlers only on the main thread, so the monitor's own SIGTERM and
    SIGINT handlers stay in charge.
    """

    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        self.host, self.port = host, port
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False)
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._serve, name="monitor-web", daemon=True)
        self.error: BaseException | None = None

    def _serve(self) -> None:
        try:
            self.server.run()
        except BaseException as exc:  # noqa: BLE001 - kept for start() to report (uvicorn exits on bind errors)
            self.error = exc

    def start(self, timeout: float = 10.0) -> WebServer:
        """Start serving; raise ``RuntimeError`` if the server is not up within ``timeout`` seconds."""
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                reason = f": {self.error!r}" if self.error else ""
                raise RuntimeError(f"monitor web server did not start on {self.host}:{self.port}{reason}")
            time.sleep(0.05)
        log.info("monitor web server listening", extra={"url": f"http://{self.host}:{self.port}/"})
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Ask uvicorn to exit and wait for the thread."""
        self.server.should_exit = True
        self._thread.join(timeout)
