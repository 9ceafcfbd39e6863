"""The scoring budget: how much of each expensive metric group a worker can afford.

Pure (no I/O, no clock of its own: callers pass the times), so it is unit-tested with fake
clocks. The worker feeds it, per batch, the CPU seconds each group spent and how many events it
scored (:meth:`ScoringBudget.observe`), then the batch's size and newest event time
(:meth:`ScoringBudget.update`); :meth:`ScoringBudget.fraction` is then the share of events each
group scores next.

The model: events arrive at ``rate`` per second (measured on the events' own timestamps, so a
worker draining a backlog still sees the producers' rate, not its own speed). Each group costs
``cost[g]`` CPU seconds per scored event (an EWMA). Cheap groups score every event. The budget
(CPU seconds per second, i.e. a share of one core) must cover
``rate * (cheap cost + sum(fraction[g] * cost[g]))``; the expensive groups share what the cheap
ones leave by max-min fairness on CPU: each gets an equal share, a group that needs less than its
share scores every event and the rest is split among the others. While the worker lags behind
the newest events, the rate it plans for includes draining the backlog within ``catch_up_s``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

#: The worker's own work per event outside scoring (parse, write, publish), observed like a cheap
#: group: the budget covers the whole worker, so scoring plus its pipeline fit what it can keep up with.
PIPELINE = "pipeline"
#: The garbage collector's CPU, averaged over many batches: a cheap cost of its own (see
#: :meth:`ScoringBudget.pause`).
GC = "gc"


def ewma(old: float | None, new: float, alpha: float) -> float:
    """Exponentially weighted moving average; the first observation is taken as is.

    >>> ewma(None, 4.0, 0.5), ewma(4.0, 2.0, 0.5)
    (4.0, 3.0)
    """
    return new if old is None else (1 - alpha) * old + alpha * new


def fair_fractions(costs: dict[str, float], available: float, min_fraction: float) -> dict[str, float]:
    """Fractions of events each group scores so that ``sum(fraction * cost) <= available`` CPU
    seconds per event, shared by max-min fairness (see the module docstring).

    >>> fair_fractions({"a": 1.0, "b": 0.1}, 0.6, 0.0)
    {'b': 1.0, 'a': 0.5}
    >>> fair_fractions({"a": 1.0}, 5.0, 0.0), fair_fractions({"a": 1.0}, 0.0, 0.01)
    ({'a': 1.0}, {'a': 0.01})
    """
    out: dict[str, float] = {}
    left = max(available, 0.0)
    todo = sorted(costs, key=lambda g: costs[g])
    while todo:
        share = left / len(todo)
        g = todo[0]
        if costs[g] <= share:
            out[g] = 1.0  # cheapest first: it needs less than an equal share; the rest goes on
            left -= costs[g]
            todo.pop(0)
            continue
        for g in todo:  # none of the rest fits: each scores what an equal share buys
            out[g] = min(1.0, max(min_fraction, share / costs[g] if costs[g] > 0 else 1.0))
        break
    return out


@dataclass
class ScoringBudget:
    """Per-group sampling fractions that keep a worker's scoring within ``budget`` cores.

    ``expensive`` groups may be sampled; any other group observed is cheap and always scores
    every event (its cost still counts against the budget). A group whose cost is not known yet
    scores every event (the worker measures each group once at warm-up).
    """

    budget: float
    expensive: Iterable[str]
    #: Weight of the newest observation in the cost and rate averages.
    alpha: float = 0.3
    #: A lagging worker plans to drain its backlog within this many seconds.
    #: (15 s, not a minute: at 200 events/s with a minute a default worker settled 10 s behind.)
    catch_up_s: float = 15.0
    #: Lag (event time to now) below which the worker counts as keeping up.
    lag_tolerance_s: float = 2.0
    #: Floor of a sampled group's scored events per second, so every group keeps some signal at
    #: any rate (0.2/s: 180 scores in a 15-minute window). A floor in events, not a fraction: a 1 %
    #: floor on perplexity (~0.2 CPU-s per event) alone needed 0.4 core at 200 events/s.
    min_scored_per_s: float = 0.2
    #: Absolute floor of a fraction (the stored ``sample_fraction`` stays a sane weight).
    min_fraction: float = 1e-4
    #: Shortest stretch of event time that gives a rate measurement (shorter ones accumulate).
    min_span_s: float = 0.5
    #: Batches over which collector pauses are averaged (a decaying sum, see :meth:`pause`).
    pause_memory: int = 1000
    costs: dict[str, float] = field(default_factory=dict)
    rate: float | None = None
    lag_s: float = 0.0
    _fractions: dict[str, float] = field(default_factory=dict)
    _newest: float | None = None
    _pending: int = 0
    _bound: float | None = None
    _paused_s: float = 0.0
    _paused_events: float = 0.0

    def __post_init__(self) -> None:
        self.expensive = frozenset(self.expensive)

    @property
    def enabled(self) -> bool:
        """A budget of 0 is no budget: every group scores every event."""
        return self.budget > 0

    def observe(self, group: str, cpu_s: float, n_events: int) -> None:
        """Record that ``group`` spent ``cpu_s`` CPU seconds scoring ``n_events`` events."""
        if n_events <= 0:
            return
        self.costs[group] = ewma(self.costs.get(group), max(cpu_s, 0.0) / n_events, self.alpha)

    def pause(self, cpu_s: float) -> None:
        """Record ``cpu_s`` CPU seconds the garbage collector took (callers leave them out of
        the group or step they interrupted).

        A full collection walks the whole heap: its cost belongs to the process, and it comes
        every few hundred batches, not every batch. Fed to a group's moving average, one 1 s
        collection in a 200-event batch read as 5 ms per event, and the expensive groups were
        sampled to their floor for the next batches. So pauses are averaged over the events of
        the last ~``pause_memory`` batches into the cheap cost ``gc``, which :meth:`update` sets.

        >>> b = ScoringBudget(0.8, ["perplexity"])
        >>> b.update(100, 10.0, now=10.0)
        >>> b.update(100, 11.0, now=11.0)
        >>> b.pause(1.0)
        >>> round(b.costs["gc"], 4)  # 1 s over the 200 events seen: 5 ms each
        0.005
        """
        self._paused_s += max(cpu_s, 0.0)
        self._cost_pauses()

    def _cost_pauses(self) -> None:
        if self._paused_s > 0 and self._paused_events > 0:
            self.costs[GC] = self._paused_s / self._paused_events

    def update(self, n_events: int, newest_ts: float, now: float, oldest_ts: float | None = None) -> None:
        """Account a batch of ``n_events`` whose newest event time is ``newest_ts`` (epoch
        seconds), seen at ``now``; recompute the fractions. ``oldest_ts`` (the batch's oldest
        event time) lets the first batch give a rate, so a worker started into a backlog does
        not score its whole first batch."""
        self.lag_s = max(0.0, now - newest_ts)
        self._pending += n_events
        keep = 1.0 - 1.0 / self.pause_memory  # both sums decay alike: a mean of recent batches
        self._paused_events = self._paused_events * keep + n_events
        self._paused_s *= keep
        self._cost_pauses()
        # The batch's own events bound the rate from below: n of them within their spread, or
        # within catch_up_s (the time the worker gives itself to drain a backlog) if that is
        # longer. (2 s sampled a burst of ten test events; 15 s scores a handful in full.)
        own = 0.0
        if oldest_ts is not None and n_events > 1:
            own = (n_events - 1) / max(newest_ts - oldest_ts, self.catch_up_s)
        if self._newest is None:
            self._newest = newest_ts
            self._pending = 0  # the first batch sets the origin of event time ...
            # (Only over a real stretch of time: ten events sent at once are a burst, not a rate.)
            if oldest_ts is not None and n_events > 1 and newest_ts - oldest_ts >= self.min_span_s:
                self.rate = (n_events - 1) / (newest_ts - oldest_ts)  # ... and its own spread a first rate
        elif newest_ts - self._newest >= self.min_span_s:
            # An idle stretch before a batch is not part of its arrival rate: traffic that starts
            # after a pause (one probe event, then 200/s) measured 6/s and was scored in full.
            self.rate = ewma(self.rate, max(self._pending / (newest_ts - self._newest), own), self.alpha)
            self._newest, self._pending = newest_ts, 0
        # Until a rate is measured, plan for the batch's own bound: a first batch of 200 scored at
        # full cost stalled a worker for 8 s.
        self._bound = own if self.rate is None and own > 0 else None
        self._fractions = self._compute()

    def planned_rate(self) -> float | None:
        """Events per second the worker plans for: the arrival rate, plus the backlog to drain
        (before the rate is known: the first batch's bound, see :meth:`update`)."""
        if self.rate is None:
            return self._bound
        if self.lag_s <= self.lag_tolerance_s:
            return self.rate
        return self.rate * (1.0 + self.lag_s / self.catch_up_s)

    def _compute(self) -> dict[str, float]:
        rate = self.planned_rate()
        if not self.enabled or not rate:
            return {}
        cheap = sum(c for g, c in self.costs.items() if g not in self.expensive)
        known = {g: c for g, c in self.costs.items() if g in self.expensive}
        return fair_fractions(known, self.budget / rate - cheap, self.floor())

    def floor(self) -> float:
        """The lowest fraction a sampled group gets now: ``min_scored_per_s`` events per second at
        the planned rate, at least ``min_fraction``, at most 1.

        >>> b = ScoringBudget(0.8, ["perplexity"]); b.rate = 200.0
        >>> b.floor()
        0.001
        """
        rate = self.planned_rate()
        if not rate:
            return 1.0
        return min(1.0, max(self.min_fraction, self.min_scored_per_s / rate))

    def fraction(self, group: str) -> float:
        """Share of events ``group`` scores now (1 for cheap groups and until measured)."""
        if group not in self.expensive:
            return 1.0
        return self._fractions.get(group, 1.0)

    def fractions(self) -> dict[str, float]:
        """The fraction of every expensive group measured so far."""
        return {g: self.fraction(g) for g in sorted(self.costs) if g in self.expensive}

    def demand(self) -> float | None:
        """CPU cores full scoring (every group, every event) would need at the planned rate."""
        rate = self.planned_rate()
        return None if rate is None else rate * sum(self.costs.values())


class TimeStratifiedSampler:
    """Takes one event per slot of ``1 / (fraction * rate)`` seconds of event time, per stream
    (model version): the drift sample is spread evenly over time (one event per time stratum), so
    a burst does not fill the detector's window with one minute of traffic and a quiet hour still
    counts. A Bernoulli sample of the same fraction would follow the bursts.

    The sampler keeps the time of the last event taken per stream; a restarted worker may take
    one extra event per stream, which only adds a vector to the test.
    """

    def __init__(self) -> None:
        self._last: dict[str, float] = {}

    def take(self, stream: str, ts: float, fraction: float, rate: float | None) -> bool:
        """Whether the event of ``stream`` at event time ``ts`` (epoch seconds) is in the sample."""
        if fraction >= 1.0 or not rate:
            return True
        spacing = 1.0 / (fraction * rate)
        last = self._last.get(stream)
        # One event per stratum (slot of ``spacing`` seconds): both times are placed with today's
        # spacing, so a change of rate never skips or doubles a slot.
        if last is not None and ts // spacing <= last // spacing:
            return False
        self._last[stream] = ts
        return True
