"""The contract of a metric group: what it measures (names, units, directions), what it costs,
how it warms up and how it scores a batch.

A group is one module in this package plus one line in :mod:`atalaia.metrics.groups.registry`.
Everything else that lists metrics — the worker's scoring, the settings' group names, the
dashboard's and the report's charts, the docs' metrics table, the check of the default rules —
reads the registry.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from atalaia.events import InferenceEvent, MetricEvent

if TYPE_CHECKING:
    from atalaia.settings import Settings

log = logging.getLogger(__name__)

Direction = Literal["higher", "lower", "neither"]
CostClass = Literal["cheap", "expensive"]


@dataclass(frozen=True)
class Metric:
    """One metric a group writes to ``metrics.name``."""

    name: str
    unit: str
    #: Which way is better: ``higher``, ``lower``, or ``neither`` (a count, a ratio near 1, ...).
    direction: Direction
    description: str


@dataclass(frozen=True)
class Chart:
    """One chart of the dashboard (and, for ``windows`` charts, of the report).

    ``stats`` name columns of ``metric_windows`` (``mean``, ``p50``, ``p95``, ``p99``) or the
    derived ``rate`` (rows per second) and ``per_hour`` (sum of the values per hour, from
    ``mean * count``). A chart with ``source="drift"`` draws the drift test scores and their
    threshold from ``metrics`` instead.
    """

    key: str
    title: str
    unit: str
    metric: str
    stats: tuple[str, ...]
    source: str = "windows"
    #: Metric names whose alert rules are marked on this chart.
    alert_metrics: tuple[str, ...] = ()

    def describe(self) -> dict[str, Any]:
        """The chart as JSON for the page."""
        return {
            "key": self.key,
            "title": self.title,
            "unit": self.unit,
            "metric": self.metric,
            "stats": list(self.stats),
            "alert_metrics": list(self.alert_metrics or (self.metric,)),
        }


def sampled(event_id: Any, group: str, rate: float) -> bool:
    """Deterministic sampling: the same event is always in or out, so a redelivery agrees.

    >>> import uuid
    >>> sampled(uuid.UUID(int=7), "perplexity", 1.0), sampled(uuid.UUID(int=7), "perplexity", 0.0)
    (True, False)
    """
    if rate >= 1.0:
        return True
    if rate <= 0.0:
        return False
    digest = hashlib.blake2b(f"{event_id}:{group}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < rate


@dataclass
class ScoredBatch:
    """What scoring a batch produced."""

    metrics: list[MetricEvent] = field(default_factory=list)
    embeddings: list[dict[str, Any]] = field(default_factory=list)
    #: Per group: wall seconds spent and events scored (the worker logs them with the batch).
    groups: dict[str, tuple[float, int]] = field(default_factory=dict)


class Collector:
    """Where groups put their scores: one metric event per (event, metric), value or error."""

    def __init__(self, batch: ScoredBatch) -> None:
        self.batch = batch
        self.out = batch.metrics
        #: The sampling fraction of the group now scoring, stored with each of its rows.
        self.fraction = 1.0

    def add(
        self,
        event: InferenceEvent,
        name: str,
        value: float | None = None,
        error: str | None = None,
        labels: dict[str, str] | None = None,
    ) -> None:
        """Record ``name`` of ``event``: a finite value, or the error that prevented it."""
        if value is not None and not math.isfinite(value):
            value, error = None, error or f"non-finite value {value}"
        self.out.append(MetricEvent.of(event, name, value, error, labels, self.fraction))

    def guard(self, events: Sequence[InferenceEvent], names: Sequence[str], fn: Callable[[], None]) -> None:
        """Run a whole-batch computation; if it fails, every event gets an error row per name."""
        try:
            fn()
        except Exception as exc:
            log.exception("metric group failed on a batch", extra={"metrics": list(names)})
            for event in events:
                for name in names:
                    self.add(event, name, error=f"{type(exc).__name__}: {exc}"[:500])


class MetricGroup:
    """A set of metrics computed together (one model, one pass over the batch).

    Subclasses set the class attributes and implement :meth:`score`; models are reached through
    ``models`` (the worker's :class:`~consumers.scoring.BatchScorer`, which loads each model
    once, lazily, and lets tests hand in fakes), so two groups can share one model.
    """

    #: The group's name in ``ATALAIA_METRIC_GROUPS``.
    name: ClassVar[str]
    metrics: ClassVar[tuple[Metric, ...]]
    #: ``cheap`` groups score every event; ``expensive`` ones may be sampled (``ATALAIA_SAMPLE_RATES``).
    cost: ClassVar[CostClass] = "cheap"
    #: Enabled when ``ATALAIA_METRIC_GROUPS`` is not set.
    default: ClassVar[bool] = True
    #: For the docs table: the model or method, and which events get the metrics.
    method: ClassVar[str] = ""
    when: ClassVar[str] = "every event"
    charts: ClassVar[tuple[Chart, ...]] = ()
    #: Whether the group reads the text of the event (events without captured content skip it).
    needs_text: ClassVar[bool] = True

    def __init__(self, settings: Settings, models: Any) -> None:
        self.settings = settings
        self.models = models

    def warm_up(self) -> None:
        """Load what :meth:`score` needs, so the first batch is not slow."""

    def rate(self) -> float:
        """Fraction of events this group scores: 1 for cheap groups; for expensive ones the
        explicit ``ATALAIA_SAMPLE_RATES`` entry, else the worker's scoring budget."""
        if self.cost == "cheap":
            return 1.0
        if self.name in self.settings.sample_rates:
            return self.settings.sample_rates[self.name]
        budget = getattr(self.models, "budget", None)
        return budget.fraction(self.name) if budget is not None else 1.0

    def chosen(self, events: Sequence[InferenceEvent]) -> list[InferenceEvent]:
        """The events of the batch this group scores (deterministic per event)."""
        rate = self.rate()
        return [ev for ev in events if sampled(ev.event_id, self.name, rate)]

    def score(self, events: Sequence[InferenceEvent], out: Collector) -> None:
        """Add this group's metrics of ``events`` to ``out``; never raise for one bad event."""
        raise NotImplementedError


def last_user_message(event: InferenceEvent) -> str:
    """The prompt as the user wrote it: the last user message (system prompts are the same for all)."""
    for message in reversed(event.messages):
        if message.role == "user":
            return message.text
    return event.messages[-1].text if event.messages else ""


def has_content(event: InferenceEvent) -> bool:
    """Whether the event carries text to score: an OpenTelemetry span recorded without content
    capture has neither messages nor response, and gets operational metrics only."""
    return bool(event.response) or any(m.text for m in event.messages)
