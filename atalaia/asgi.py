"""Running a service's ASGI app with uvicorn so that SIGTERM stops it as cleanly as Ctrl-C."""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any


class Stopped(SystemExit):
    """Raised out of :func:`serve_until_stopped` when SIGTERM stopped the server."""


def _raise_stopped(signum: int, _frame: FrameType | None) -> None:
    raise Stopped(128 + signum)


def serve_until_stopped(app: Any, host: str, port: int, *, default_headers: bool = True) -> None:
    """Serve ``app`` on ``host:port`` until SIGINT or SIGTERM, then let the caller's cleanup run.

    uvicorn (≥ 0.29) shuts down gracefully on SIGTERM and then raises the signal again, so that
    the process ends "killed by SIGTERM". Under SIGTERM's default action that kills the process
    on the spot, and the caller's ``finally`` (closing its event producer, which delivers or
    spools what is queued) never runs. Here SIGTERM, once uvicorn is done with it, raises
    :class:`Stopped` (exit status 143, as a SIGTERM death reports) through the caller instead.
    SIGINT already does the same through ``KeyboardInterrupt``. Off the main thread, where
    signals cannot be handled, this is plain ``uvicorn.run``.

    ``default_headers=False`` leaves out uvicorn's ``date`` and ``server`` headers (for a proxy,
    whose answers already carry the upstream's).
    """
    import uvicorn

    on_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_stopped) if on_main else None
    try:
        uvicorn.run(
            app,
            host=host,
            port=port,
            log_level="warning",
            access_log=False,
            server_header=default_headers,
            date_header=default_headers,
        )
    finally:
        if on_main:
            signal.signal(signal.SIGTERM, previous)
