"""Time spent in Python's garbage collector, per generation, between two readings.

A worker holds millions of long-lived objects (models, vocabularies, the NLTK corpora); a
full (generation 2) collection walks all of them and stops every thread for it (0.4-0.6 s
each, about 3 % of a loaded worker's time, measured with ``bench/load.py --log-level INFO``).
The worker logs what this measures with each batch, beside its steps' times, and freezes what
warm-up loaded (:func:`freeze_loaded`) so that full collections walk only what came after.
"""

from __future__ import annotations

import gc
import time
from typing import Any

_cpu_total = 0.0
_cpu_started = 0.0


def _count_cpu(phase: str, info: dict[str, Any]) -> None:
    global _cpu_total, _cpu_started
    # The collector runs in the thread that triggered it, holding the GIL: that thread's CPU
    # clock is the collection's CPU (a wall clock would count a preempted collection twice).
    if phase == "start":
        _cpu_started = time.thread_time()
    else:
        _cpu_total += time.thread_time() - _cpu_started


def collector_cpu_seconds() -> float:
    """CPU seconds this process has spent in the garbage collector since the first call (a
    running total: callers take differences). One callback for the whole process, installed on
    the first call, so scorers built by the hundred (tests) do not each add one.

    A full collection's cost is the heap's, not the code that happened to trigger it: the
    scoring budget takes it out of the metric group it interrupted (one 1 s collection inside a
    200-event batch read as 5 ms per event and sampled perplexity to its floor).

    >>> before = collector_cpu_seconds()
    >>> _ = gc.collect()
    >>> collector_cpu_seconds() > before
    True
    """
    if _count_cpu not in gc.callbacks:
        gc.callbacks.append(_count_cpu)
    return _cpu_total


class GcPauses:
    """Accumulates the collector's pauses (``gc.callbacks``) until :meth:`take` reads them.

    >>> pauses = GcPauses().install()
    >>> _ = gc.collect()
    >>> seconds = pauses.take()
    >>> seconds[2] > 0 and pauses.take() == {}
    True
    >>> pauses.uninstall()
    """

    def __init__(self) -> None:
        self._started = 0.0
        self._seconds: dict[int, float] = {}

    def install(self) -> GcPauses:
        """Start measuring; returns self."""
        gc.callbacks.append(self._callback)
        return self

    def uninstall(self) -> None:
        """Stop measuring."""
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            generation = int(info.get("generation", 0))
            self._seconds[generation] = self._seconds.get(generation, 0.0) + time.perf_counter() - self._started

    def take(self) -> dict[int, float]:
        """Seconds per generation since the last call (generations with none left out)."""
        out, self._seconds = self._seconds, {}
        return out


def freeze_loaded() -> None:
    """Move every object alive now to the collector's permanent generation (``gc.freeze``).

    Called once warm-up has loaded the models and corpora: they live as long as the process, and
    full collections then walk only what was allocated since. Measured on a worker fed 200
    events/s for 180 s (``bench/load.py --log-level INFO``): full collections took 10.3 s in all,
    the longest 1.1 s, without; 4.6 s, the longest 0.40 s, with (more of them, each shorter).
    Reference counting still frees frozen objects that are dropped; only cycles among them stay.
    """
    gc.collect()
    gc.freeze()
