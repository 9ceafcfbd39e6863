"""The monitor keeps its alert state across a restart: no spurious resolve, no duplicate firing."""

from __future__ import annotations

import time
import uuid

import pytest
from kafka import KafkaProducer
from sqlalchemy import select

from atalaia.events import MetricEvent, utcnow
from atalaia.settings import Settings
from atalaia.storage import repository
from atalaia.storage import tables as t
from atalaia.storage.db import get_engine, upgrade
from atalaia.topics import ensure_topics
from tests.integration.services import log_text, service, wait_until

pytestmark = pytest.mark.integration

RULES = """
rules:
  - name: slow_mean
    metric: latency_ms
    aggregation: mean
    window: 600
    threshold: 100
    min_samples: 3
"""


def _states(engine) -> list[str]:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        return [r.state for r in conn.execute(select(t.alerts.c.state).order_by(t.alerts.c.ts))]


def test_restart_restores_windows_and_open_alerts(isolated_settings: Settings) -> None:
    rules = isolated_settings.home / "rules.yaml"
    rules.write_text(RULES)
    settings = isolated_settings.model_copy(update={"rules_file": rules})
    upgrade(settings.database_url)
    ensure_topics(settings)
    engine = get_engine(settings.database_url)

    # What a worker does: store metric rows, then publish them.
    metrics = [
        MetricEvent(
            event_id=MetricEvent.id_for(src, "latency_ms"),
            source_event_id=src,
            source_ts=utcnow(),
            service="svc",
            model_version="v1",
            name="latency_ms",
            value=500.0,
        )
        for src in (uuid.uuid4() for _ in range(5))
    ]
    with engine.begin() as conn:
        repository.insert_ignoring_duplicates(conn, t.metrics, [repository.metric_row(m) for m in metrics])
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers)
    for m in metrics:
        producer.send(settings.topic("metrics"), value=m.to_json())
    producer.flush()
    producer.close()

    with service("monitor", settings):
        wait_until(
            lambda: _states(engine) == ["pending", "firing"], 60, "pending+firing\n" + log_text(settings, "monitor")
        )
    with service("monitor", settings):
        wait_until(lambda: log_text(settings, "monitor").count("monitor started") >= 2, 60, "the second start")
        time.sleep(5)  # several evaluation rounds
    assert _states(engine) == ["pending", "firing"]
    assert '"samples_from_table": 5' in log_text(settings, "monitor")
