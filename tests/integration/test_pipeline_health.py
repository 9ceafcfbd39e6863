"""Pipeline health on the real stack: the worker reports its consumer lag and last commit; with
the worker stopped and events waiting, the monitor's consumer-lag and freshness rules fire and
its health endpoints show the waiting events."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import create_engine, func, select

from atalaia.settings import Settings
from atalaia.storage import tables as t
from atalaia.topics import ensure_topics
from tests.integration.services import log_text, service, wait_until
from tests.integration.test_metrics_pipeline import count, event, produce

pytestmark = pytest.mark.integration

RULES = """
rules:
  - name: consumer_lag_high
    metric: consumer_lag
    aggregation: min
    window: 5
    comparator: ">"
    threshold: 10
    for: 2
    group_by: [service]
    severity: critical
  - name: event_freshness_high
    metric: event_freshness_s
    aggregation: min
    window: 5
    comparator: ">"
    threshold: 1
    for: 2
    group_by: [service]
    severity: critical
"""


def _get(port: int, path: str) -> httpx.Response | None:
    try:
        return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=5)
    except httpx.HTTPError:
        return None


def _firing(engine) -> set[tuple[str, str]]:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        rows = conn.execute(select(t.alerts.c.rule, t.alerts.c.labels).where(t.alerts.c.state == "firing")).all()
    return {(r.rule, r.labels.get("service")) for r in rows}


def test_worker_and_monitor_report_lag_and_the_rules_page(isolated_settings: Settings, fresh_pg: str) -> None:
    rules = isolated_settings.home / "rules.yaml"
    rules.write_text(RULES)
    settings = isolated_settings.model_copy(
        update={
            "database_url": fresh_pg,
            "metric_groups": "operational",
            "pipeline_health_every_s": 1.0,
            "rules_file": rules,
        }
    )
    ensure_topics(settings)
    engine = create_engine(fresh_pg)
    group = settings.worker_id

    with service("worker", settings):
        produce(settings, [event(f"q{i}") for i in range(100)])
        wait_until(lambda: count(engine, t.inference_events) == 100, 120, "100 rows\n" + log_text(settings, "worker"))

        def caught_up() -> dict | None:  # type: ignore[type-arg]
            r = _get(settings.worker_web_port, "/healthz")
            body = r.json()["consumer"] if r is not None and r.status_code == 200 else None
            ok = body is not None and body["lag"] == 0 and body["last_commit_age_s"] is not None
            return body if ok else None

        health = wait_until(caught_up, 60, "the worker's health to show lag 0 and a commit")
        assert health["group"] == group and health["error"] is None and health["last_commit_age_s"] < 60
        text = _get(settings.worker_web_port, "/metrics").text  # type: ignore[union-attr]
        assert f'atalaia_consumer_lag{{group="{group}"}} 0.0' in text
        assert f'atalaia_consumer_last_commit_age_seconds{{group="{group}"}}' in text

    # The worker is stopped: new events wait in Kafka, and the monitor sees them wait.
    produce(settings, [event(f"late {i}") for i in range(30)])
    with service("monitor", settings):
        wait_until(
            lambda: {("consumer_lag_high", group), ("event_freshness_high", group)} <= _firing(engine),
            90,
            "both pipeline-health alerts firing\n" + log_text(settings, "monitor")[-3000:],
        )
        body = _get(settings.monitor_port, "/healthz").json()  # type: ignore[union-attr]
        assert body["worker"]["group"] == group and body["worker"]["lag"] == 30
        assert body["worker"]["oldest_waiting_age_s"] > 1
        assert body["consumer"]["group"] == settings.monitor_group
        text = _get(settings.monitor_port, "/metrics").text  # type: ignore[union-attr]
        assert f'atalaia_consumer_lag{{group="{group}"}} 30.0' in text

    # The worker is back: the events are stored and the alerts resolve.
    with service("worker", settings), service("monitor", settings):
        wait_until(lambda: count(engine, t.inference_events) == 130, 120, "the late events stored")
        with engine.connect() as conn:
            resolved = lambda: conn.execute(  # noqa: E731
                select(func.count()).select_from(t.alerts).where(t.alerts.c.state == "resolved")
            ).scalar_one()
            wait_until(lambda: resolved() >= 2, 90, "both alerts resolved\n" + log_text(settings, "monitor")[-3000:])
