"""The monitor service: consumes ``metrics``, evaluates rules, stores and publishes alert transitions."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import OrderedDict
from datetime import timedelta
from typing import Any

from sqlalchemy import Engine, select

from atalaia.events import AlertEvent, MetricEvent, parse_metrics, utcnow
from atalaia.kafka.clients import FollowStats, Publisher
from atalaia.settings import Settings
from atalaia.storage import repository
from atalaia.storage import tables as t
from atalaia.storage.db import get_engine
from atalaia.storage.repository import as_utc
from monitors.evaluator import RuleEvaluator
from monitors.pipeline_health import PipelineHealth
from monitors.routing.delivery import DeliveryWorker, enqueue, receivers_from_settings
from monitors.rules import Rule, load_rules

log = logging.getLogger(__name__)

EVALUATE_EVERY_S = 1.0
SEEN_IDS = 200_000


class _SeenIds:
    """Bounded memory of recent metric ids: the worker may republish a metric after a crash."""

    def __init__(self, size: int) -> None:
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._size = size

    def add(self, key: str) -> bool:
        if key in self._ids:
            return False
        self._ids[key] = None
        if len(self._ids) > self._size:
            self._ids.popitem(last=False)
        return True


class MonitorService:
    """Runs a :class:`RuleEvaluator` on the live metric stream, delivers alerts, serves the web app.

    ``serve_web=False`` skips the HTTP server (dashboard and alert API) for embedded use.
    """

    def __init__(
        self,
        settings: Settings,
        rules: list[Rule] | None = None,
        engine: Engine | None = None,
        serve_web: bool = True,
    ) -> None:
        self.settings = settings
        self.rules = rules if rules is not None else load_rules(settings.rules_file)
        self.engine = engine or get_engine(settings.database_url)
        self.evaluator = RuleEvaluator(self.rules)
        self.receivers = receivers_from_settings(settings)  # ValueError: a receiver is misconfigured
        self.delivery = DeliveryWorker(self.engine, self.receivers, settings, {r.name: r for r in self.rules})
        self.serve_web = serve_web
        self._seen = _SeenIds(SEEN_IDS)
        self._stop = threading.Event()
        self.transitions = 0
        #: Consumer lag and freshness of the worker's and the monitor's groups (while running).
        self.pipeline: PipelineHealth | None = None

    def catch_up_from_table(self, limit: int = 500_000) -> int:
        """Refill the rule windows from the ``metrics`` table; return the samples loaded.

        After a restart the windows would otherwise start empty: restored alerts would resolve at
        once and ``for`` durations would restart. Kafka redelivers only uncommitted metrics, and
        metric ids are deterministic, so nothing is counted twice.
        """
        windows: dict[str, float] = {}
        for rule in self.rules:
            windows[rule.metric] = max(windows.get(rule.metric, 0.0), rule.window_s)
        if not windows:
            return 0
        now = utcnow()
        loaded = 0
        self._seed_baselines()
        with self.engine.connect() as conn:
            for name, window_s in windows.items():
                query = (
                    select(t.metrics)
                    .where(t.metrics.c.name == name, t.metrics.c.ts >= now - timedelta(seconds=window_s))
                    .order_by(t.metrics.c.ts)
                    .limit(limit)
                )
                for row in conn.execute(query).mappings():
                    source = uuid.UUID(row["event_id"])
                    metric = MetricEvent(
                        event_id=MetricEvent.id_for(source, name),
                        source_event_id=source,
                        source_ts=as_utc(row["ts"]),
                        service=row["service"],
                        model_version=row["model_version"],
                        name=name,
                        value=row["value"],
                        error=row["error"],
                    )
                    if self._seen.add(str(metric.event_id)):
                        self.evaluator.observe(metric)
                        loaded += 1
        return loaded

    def _seed_baselines(self) -> int:
        """Give baseline rules their per-group baseline back: the first values in ``metrics``."""
        seeded = 0
        m = t.metrics
        for rule in self.rules:
            if rule.baseline is None:
                continue
            group_cols = [m.c[k] for k in rule.group_by]
            with self.engine.connect() as conn:
                where = [m.c.name == rule.metric, m.c.value.is_not(None)]
                where += [m.c[k] == v for k, v in rule.filter.items()]
                groups = conn.execute(select(*group_cols).where(*where).distinct()).all() if group_cols else [()]
                for group in groups:
                    labels = {k: str(v) for k, v in zip(rule.group_by, group, strict=True)}
                    query = (
                        select(m.c.value)
                        .where(*where, *[m.c[k] == v for k, v in labels.items()])
                        .order_by(m.c.ts, m.c.id)
                        .limit(rule.baseline.samples)
                    )
                    values = [float(row[0]) for row in conn.execute(query)]
                    seeded += self.evaluator.seed_baseline(rule.name, labels, values)
        return seeded

    def restore_open_alerts(self) -> int:
        """Re-open alerts whose latest transition is pending or firing; return how many."""
        restored = 0
        with self.engine.connect() as conn:
            rows = conn.execute(select(t.alerts).order_by(t.alerts.c.ts)).mappings().all()
        latest: dict[str, Any] = {}
        for row in rows:
            latest[row["fingerprint"]] = row
        for row in latest.values():
            if row["state"] in ("pending", "firing"):
                labels = {k: v for k, v in row["labels"].items() if k in ("model_version", "service")}
                self.evaluator.restore(
                    row["rule"],
                    labels,
                    uuid.UUID(row["alert_id"]),
                    row["state"],
                    as_utc(row["started_at"]),
                    event_id=uuid.UUID(row["event_id"]),
                )
                restored += 1
        return restored

    def stop(self) -> None:
        """Ask the loop to finish after the current poll."""
        self._stop.set()

    def _retry(self, what: str, fn: Any) -> Any:
        delay = 0.5
        while True:
            try:
                return fn()
            except Exception as exc:
                if self._stop.is_set():
                    raise
                log.warning(
                    "retrying", extra={"what": what, "retry_in_s": delay, "error": f"{type(exc).__name__}: {exc}"}
                )
                time.sleep(delay)
                delay = min(delay * 2, 30.0)

    def _emit(self, publisher: Publisher, transitions: list[AlertEvent]) -> None:
        alerts_topic = self.settings.topic("alerts")
        for alert in transitions:

            def store(alert: AlertEvent = alert) -> int:
                # The transition and its deliveries in one transaction: neither exists without the other.
                with self.engine.begin() as conn:
                    new = repository.store_alert(conn, alert)
                    if new:
                        enqueue(conn, alert, self.delivery.receivers, utcnow())
                    return new

            self._retry("store alert", store)
            self.delivery.wake()
            publisher.publish_retrying(
                alert, alerts_topic, key=alert.fingerprint.encode(), stop=self._stop, what="publish alert"
            )
            self.transitions += 1
            log.warning(
                "alert transition",
                extra={
                    "rule": alert.rule,
                    "state": alert.state,
                    "value": alert.value,
                    "threshold": alert.threshold,
                    "labels": alert.labels,
                },
            )

    def run(self) -> None:
        """Consume until :meth:`stop`; offsets are committed after transitions are stored and sent."""
        from atalaia.kafka.clients import follow

        restored = self.restore_open_alerts()
        caught_up = self.catch_up_from_table()
        publisher = Publisher(self.settings, "atalaia-monitor")
        log.info(
            "monitor started",
            extra={
                "rules": [r.name for r in self.rules],
                "restored_alerts": restored,
                "samples_from_table": caught_up,
                "receivers": [r.name for r in self.receivers],
            },
        )
        self.delivery.start()
        # Consumer lag and event -> row freshness, measured from outside, as samples for the
        # built-in pipeline-health rules and figures for /healthz and /metrics.
        stats = FollowStats()
        self.pipeline = PipelineHealth(self.settings, last_commit=lambda: stats.last_commit).start()
        web, feed = self._start_web() if self.serve_web else (None, None)
        last_eval = 0.0

        def observe(metrics: Any, _msg: Any) -> None:  # list[MetricEvent], from parse_metrics
            # One message holds one metric (schema 1) or a scored event's batch (metric_batch).
            for metric in metrics:
                if self._seen.add(str(metric.event_id)):
                    self.evaluator.observe(metric)

        def evaluate(polled: bool) -> None:
            nonlocal last_eval
            if self.pipeline is not None:
                for sample in self.pipeline.drain():
                    self.evaluator.observe(sample)
            if polled or time.monotonic() - last_eval >= EVALUATE_EVERY_S:
                last_eval = time.monotonic()
                self._emit(publisher, self.evaluator.evaluate(utcnow()))

        try:
            follow(
                self.settings,
                self.settings.topic("metrics"),
                MetricEvent,
                observe,
                stop=self._stop,
                client_id="atalaia-monitor",
                group_id=self.settings.monitor_group,
                on_poll=evaluate,
                max_records=5000,
                publisher=publisher,
                parse=parse_metrics,
                stats=stats,
            )
        finally:
            self.pipeline.stop()
            publisher.close()
            self.delivery.stop()
            if web is not None:
                web.stop()
            if feed is not None:
                feed.stop()

    def _start_web(self) -> tuple[Any, Any]:
        """Serve the dashboard and alert API; a failure is logged, evaluation goes on without it."""
        from monitors.model_feed import ModelEventFeed
        from monitors.server import WebServer
        from monitors.web import create_app

        feed = ModelEventFeed(self.settings).start()
        try:
            app = create_app(self.settings, self.engine, feed, pipeline=self.pipeline)
            web = WebServer(app, self.settings.monitor_host, self.settings.monitor_port).start()
        except Exception as exc:  # noqa: BLE001 - alerts matter more than the page
            log.error(
                "monitor web server not started; evaluating without it",
                extra={"error": f"{type(exc).__name__}: {exc}", "port": self.settings.monitor_port},
            )
            feed.stop()
            return None, None
        return web, feed
