"""Pipeline health as metrics for the monitor's own rules: consumer lag and event -> row freshness.

The monitor measures, from outside, the consumer groups of the worker (``inference`` and
``feedback``) and of itself (``metrics``) every ``ATALAIA_PIPELINE_HEALTH_EVERY_S``, and feeds
each measurement to its rule evaluator as two samples (``service`` is the group's name,
``model_version`` is ``pipeline``):

- ``consumer_lag``: messages the group has not committed yet;
- ``event_freshness_s``: how long the oldest of them has waited (0 when none waits). The worker
  commits only after its rows are written, so for the worker's group this is the age of the
  oldest event that has no row yet: an upper bound of event -> row latency that keeps growing
  while the worker is stopped, stuck or too slow.

The built-in rules ``consumer_lag_high`` and ``event_freshness_high`` (``default_rules.yaml``)
watch them and route like any rule. The samples are not stored as rows: no event produced them.
While the broker cannot be asked nothing is sampled, and the rules keep their state
(``on_no_data: keep``). The same figures are on the monitor's ``/healthz`` and ``/metrics``.
"""

from __future__ import annotations

import queue
import uuid
from datetime import UTC, datetime
from typing import Any

from atalaia.events import MetricEvent
from atalaia.kafka.lag import ConsumerHealth, GroupLag, prometheus_text
from atalaia.settings import Settings

LAG = "consumer_lag"
FRESHNESS = "event_freshness_s"
#: The metric names of pipeline-health samples (rules may watch them).
METRICS = (LAG, FRESHNESS)
MODEL_VERSION = "pipeline"


def lag_metrics(lag: GroupLag) -> list[MetricEvent]:
    """The samples of one measurement: its lag, and its freshness when known.

    >>> [(m.name, m.service, m.value) for m in lag_metrics(GroupLag("w", 0))]
    [('consumer_lag', 'w', 0.0), ('event_freshness_s', 'w', 0.0)]
    """
    source = uuid.uuid4()
    ts = datetime.fromtimestamp(lag.measured_at, UTC)

    def sample(name: str, value: float) -> MetricEvent:
        return MetricEvent(
            event_id=MetricEvent.id_for(source, name),
            source_event_id=source,
            source_ts=ts,
            service=lag.group,
            model_version=MODEL_VERSION,
            name=name,
            value=value,
        )

    out = [sample(LAG, float(lag.lag))]
    freshness = 0.0 if lag.lag == 0 else lag.oldest_waiting_age_s
    if freshness is not None:
        out.append(sample(FRESHNESS, float(freshness)))
    return out


class PipelineHealth:
    """Measures the worker's and the monitor's groups; queues their samples for the evaluation loop.

    The evaluator is not thread-safe: the sampling threads only queue, and the loop that
    evaluates calls :meth:`drain` and observes what it gets.
    """

    def __init__(self, settings: Settings, last_commit: Any = None) -> None:
        self._samples: queue.SimpleQueue[MetricEvent] = queue.SimpleQueue()
        every = settings.pipeline_health_every_s
        self.worker = ConsumerHealth(
            settings,
            settings.worker_id,
            [settings.topic("inference"), settings.topic("feedback")],
            every,
            client_id="atalaia-monitor-lag",
            on_sample=self._queue,
        )
        self.monitor = ConsumerHealth(
            settings,
            settings.monitor_group,
            [settings.topic("metrics")],
            every,
            client_id="atalaia-monitor-lag",
            on_sample=self._queue,
            last_commit=last_commit,
        )

    def _queue(self, lag: GroupLag) -> None:
        for metric in lag_metrics(lag):
            self._samples.put(metric)

    def drain(self) -> list[MetricEvent]:
        """Samples measured since the last call."""
        out = []
        while True:
            try:
                out.append(self._samples.get_nowait())
            except queue.Empty:
                return out

    def start(self) -> PipelineHealth:
        """Start measuring on background threads."""
        self.worker.start()
        self.monitor.start()
        return self

    def stop(self) -> None:
        """Stop measuring."""
        self.worker.stop()
        self.monitor.stop()

    def as_dict(self) -> dict[str, Any]:
        """``consumer``: the monitor's own group (with its last commit); ``worker``: the worker's group."""
        worker = self.worker.as_dict()
        worker.pop("last_commit_age_s")  # the worker process reports its own commits
        return {"consumer": self.monitor.as_dict(), "worker": worker}

    def prometheus(self) -> str:
        """Prometheus text of both groups."""
        return prometheus_text([self.monitor, self.worker])
