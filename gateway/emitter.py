"""The gateway's event hand-off: a child process builds the events and owns the Kafka producer.

Why a process: kafka-python and the producer SDK run in threads, and in the gateway's process
they take the GIL from the event loop that relays answers. A call relayed while the previous
call's event is being serialised and sent waits for the GIL; that wait is most of the latency
the gateway adds at its tail (BENCHMARKS.md, "Gateway"). The loop pickles each answered call
(:class:`~gateway.calls.FinishedCall`: what it read on the way through, the bodies' bytes and the
timings) into a buffer, written to the child's pipe once per producer batching delay
(``ATALAIA_PRODUCER_LINGER_MS``) rather than once per call: each write wakes the child, and a
wake-up on a busy 2-core machine costs more than the write. Parsing the bodies and building,
validating, redacting and sending the event all happen in the child.

Nothing is lost that the in-process producer would keep: frames the pipe cannot take at once
wait in a buffer written when the pipe drains; when the child is gone, or the buffer is over
its cap, events go to an in-process :class:`~producers.sdk.EventProducer` (spool included)
instead. A child that dies is restarted on the same pipe, so what it had not read is read by
its successor (a frame it was half-way through is skipped by its magic prefix). Closing drains
the pipe: the child reads to end of file, then closes its producer, which delivers or spools.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import logging
import os
import pickle
import struct
import subprocess
import sys
import threading
import time
from typing import Any

from atalaia.settings import Settings

log = logging.getLogger(__name__)

MAGIC = b"ATE1"
_HEADER = struct.Struct(">4sI")
#: Bytes that may wait for the pipe before events are handed to the in-process producer instead.
MAX_BUFFERED = 16 * 1024 * 1024
#: Buffered calls past this size are written at once, not at the next flush.
BATCH_BYTES = 64 * 1024
#: Pipe capacity asked for (the default 64 KiB holds ~60 calls).
PIPE_BYTES = 1 << 20
#: How much lower the child's scheduling priority is than the gateway's (``nice``).
CHILD_NICENESS = 10
#: How the child gets its settings (pickled, base64): they may not come from the environment (tests).
SETTINGS_ENV = "ATALAIA_GATEWAY_EMITTER_SETTINGS"


def frame(payload: bytes) -> bytes:
    """``payload`` framed for the pipe: magic, big-endian length, bytes.

    >>> frame(b"{}")
    b'ATE1\\x00\\x00\\x00\\x02{}'
    """
    return _HEADER.pack(MAGIC, len(payload)) + payload


class FrameReader:
    """Splits a byte stream into frames, skipping bytes up to the next magic after a torn frame.

    >>> r = FrameReader()
    >>> r.feed(b"junk" + frame(b"a") + frame(b"bc")[:5])
    [b'a']
    >>> r.feed(frame(b"bc")[5:])
    [b'bc']
    """

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """Frames completed by ``data``."""
        self._buffer += data
        out: list[bytes] = []
        while True:
            start = self._buffer.find(MAGIC)
            if start == -1:
                # Keep a possible magic prefix split across reads.
                del self._buffer[: max(0, len(self._buffer) - len(MAGIC) + 1)]
                return out
            if start:
                log.warning("gateway event pipe: skipped %d bytes of a torn frame", start)
                del self._buffer[:start]
            if len(self._buffer) < _HEADER.size:
                return out
            _, length = _HEADER.unpack_from(self._buffer)
            end = _HEADER.size + length
            if len(self._buffer) < end:
                return out
            out.append(bytes(self._buffer[_HEADER.size : end]))
            del self._buffer[:end]


def _child_main() -> None:
    """The child (``python -m gateway.emitter``): read frames from stdin until end of file, emit
    each call's event, then close the producer (deliver or spool)."""
    from atalaia.logs import configure_logging
    from gateway.calls import EventBuilder
    from producers.sdk import EventProducer

    # Background work: on a busy machine the scheduler should run the relay loop first (the
    # pipe and its buffer hold what the child has not read yet; nothing waits on it).
    with contextlib.suppress(OSError):
        os.nice(CHILD_NICENESS)
    settings: Settings = pickle.loads(base64.b64decode(os.environ.pop(SETTINGS_ENV)))
    configure_logging(settings.log_level, settings.log_json)
    producer = EventProducer(settings, client_id=sys.argv[1])
    build = EventBuilder(settings)
    frames = FrameReader()
    try:
        while True:
            try:
                data = os.read(0, 1 << 20)
            except InterruptedError:
                continue
            if not data:
                break
            for payload in frames.feed(data):
                try:
                    # Our own parent's pickle of a FinishedCall: callers' data are values in it, never code.
                    event = build(pickle.loads(payload))
                    if event is not None:
                        producer.emit(event)
                except Exception as exc:  # noqa: BLE001 - one bad frame must not stop the others
                    log.warning("gateway event not emitted", extra={"error": str(exc)[:300]})
    finally:
        producer.close(timeout=30)


class ProcessEmitter:
    """``hand_off(call)`` for the gateway: answered calls go to a child process that builds their
    events and owns the Kafka producer.

    Call :meth:`hand_off` from the event loop (or any single thread); :meth:`close` at shutdown.
    """

    def __init__(self, settings: Settings, client_id: str) -> None:
        self.settings = settings
        self.client_id = client_id
        # The parent keeps the read end open too: events written while a child restarts stay in the pipe.
        self._read_fd, self._fd = os.pipe()
        os.set_blocking(self._fd, False)
        with contextlib.suppress(AttributeError, OSError):  # Linux: room for bursts while the child starts
            fcntl.fcntl(self._fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        self._env = {**os.environ, SETTINGS_ENV: base64.b64encode(pickle.dumps(settings)).decode()}
        self._pending = bytearray()
        self._batch = bytearray()
        self._flush_after = settings.producer_linger_ms / 1000.0
        self._flush_timer: asyncio.TimerHandle | None = None
        self._builder: Any = None
        self._writer_loop: asyncio.AbstractEventLoop | None = None
        self._fallback: Any = None
        self._lock = threading.Lock()
        self._closed = False
        self._watched: asyncio.AbstractEventLoop | None = None
        self._pidfd: int | None = None
        self.restarts = 0
        self.handed_over = 0
        self.fell_back = 0
        self._proc = self._start_child()

    def _start_child(self) -> subprocess.Popen[bytes]:
        # A fresh interpreter, not fork: the parent runs threads and an event loop.
        return subprocess.Popen(
            [sys.executable, "-m", "gateway.emitter", self.client_id], stdin=self._read_fd, env=self._env
        )

    def _alive(self) -> bool:
        return self._proc.poll() is None

    # -- the hot path ----------------------------------------------------------------------
    def hand_off(self, call: Any) -> None:
        """Queue ``call`` (a :class:`~gateway.calls.FinishedCall`) for the child; never blocks, never drops.

        On an event loop, calls wait in a buffer written at most ``ATALAIA_PRODUCER_LINGER_MS``
        later (or at once past 64 KiB); off a loop, each is written at once.
        """
        if self._closed:
            self._emit_here(call)
            return
        self.handed_over += 1
        self._batch += frame(pickle.dumps(call, protocol=pickle.HIGHEST_PROTOCOL))
        if self._flush_timer is not None and len(self._batch) < BATCH_BYTES:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        if self._watched is None:
            self._watch_child(loop)
        if len(self._batch) >= BATCH_BYTES:
            self.flush()
        elif self._flush_after > 0:
            self._flush_timer = loop.call_later(self._flush_after, self.flush)
        else:
            self.flush()

    def flush(self) -> None:
        """Write the buffered calls to the pipe now (what it cannot take waits for it to drain)."""
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        if not self._batch:
            return
        data, self._batch = bytes(self._batch), bytearray()
        if self._pending:
            # The pipe is full: a child that died gets a successor before the buffer grows further.
            if not self._alive() and not self._restart():
                self._emit_frames_here(data)
                return
            if len(self._pending) + len(data) > MAX_BUFFERED:
                self._emit_frames_here(data)
                return
            self._pending += data
            return
        try:
            written = os.write(self._fd, data)
        except BlockingIOError:
            written = 0
        except BrokenPipeError:
            self._emit_frames_here(data)
            return
        if written < len(data):
            self._pending += data[written:]
            self._watch_writable()

    def _watch_child(self, loop: asyncio.AbstractEventLoop) -> None:
        """Restart the child as soon as it exits (its pidfd turns readable), not at the next event.

        Off a loop, the is_alive check on a full pipe covers it."""
        self._watched = loop
        self._watch_exit(loop)

    def _watch_exit(self, loop: asyncio.AbstractEventLoop) -> None:
        # A pidfd turns readable when the process exits (Linux 5.3+); without one, the is_alive
        # check on a full pipe and at close covers it.
        try:
            self._pidfd = os.pidfd_open(self._proc.pid)
        except (AttributeError, OSError):
            self._pidfd = None
            return
        loop.add_reader(self._pidfd, self._on_child_exit)

    def _on_child_exit(self) -> None:
        self._unwatch_exit()
        self._proc.poll()
        if self._restart() and self._watched is not None:
            self._watch_exit(self._watched)

    def _unwatch_exit(self) -> None:
        if self._pidfd is not None:
            if self._watched is not None:
                with contextlib.suppress(Exception):
                    self._watched.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None

    def _watch_writable(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._drain_blocking()  # not on a loop: finish the write here
            return
        self._writer_loop = loop
        loop.add_writer(self._fd, self._on_writable)

    def _on_writable(self) -> None:
        try:
            written = os.write(self._fd, self._pending)
        except BlockingIOError:
            return
        except BrokenPipeError:
            written = 0
        del self._pending[:written]
        if not self._pending and self._writer_loop is not None:
            self._writer_loop.remove_writer(self._fd)
            self._writer_loop = None

    def _drain_blocking(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while self._pending and time.monotonic() < deadline:
            try:
                written = os.write(self._fd, self._pending)
            except BlockingIOError:
                time.sleep(0.005)
                continue
            del self._pending[:written]

    def _restart(self) -> bool:
        """Start a new child after one died; False when closing."""
        if self._closed:
            return False
        with self._lock:
            if self._alive():
                return True
            self.restarts += 1
            log.warning(
                "gateway event process exited; restarting it",
                extra={"exitcode": self._proc.returncode, "restarts": self.restarts},
            )
            self._proc = self._start_child()
            return True

    def _emit_here(self, call: Any) -> None:
        """Build and send ``call``'s event in this process: the child is gone or far behind."""
        with self._lock:
            if self._fallback is None:
                from gateway.calls import EventBuilder
                from producers.sdk import EventProducer

                self._builder = EventBuilder(self.settings)
                self._fallback = EventProducer(self.settings, client_id=f"{self.client_id}-local")
        self.fell_back += 1
        event = self._builder(call)
        if event is not None:
            self._fallback.emit(event)

    def _emit_frames_here(self, data: bytes) -> None:
        for payload in FrameReader().feed(data):
            self._emit_here(pickle.loads(payload))  # framed by hand_off() just now

    def close(self, timeout: float = 30.0) -> None:
        """Write what is buffered, end the pipe, and wait for the child to deliver or spool the rest."""
        deadline = time.monotonic() + timeout
        self.flush()
        self._unwatch_exit()
        if self._writer_loop is not None:
            with contextlib.suppress(Exception):
                self._writer_loop.remove_writer(self._fd)
        # A dead child's successor reads what is still in the pipe, up to the end of file below.
        if not self._alive():
            self._restart()
        if self._pending:
            self._drain_blocking(max(deadline - time.monotonic(), 0.1))
        self._closed = True
        os.close(self._fd)
        # The child reads to end of file only once no process holds the write end; ours is closed.
        try:
            self._proc.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            log.error("gateway event process did not stop in time; terminating it")
            self._proc.terminate()
            self._proc.wait(5)
        os.close(self._read_fd)
        if self._fallback is not None:
            self._fallback.close(timeout=max(deadline - time.monotonic(), 1.0))


if __name__ == "__main__":
    _child_main()
