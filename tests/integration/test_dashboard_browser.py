"""The dashboard in a real browser: Debian's Chromium, headless, driven by Playwright.

The monitor's app is served by uvicorn (:class:`monitors.server.WebServer`, as ``atalaia
monitor`` serves it) over a SQLite file seeded with an hour of windows, drift tests, alerts and a
deploy; the page must draw every chart with data points, the drift threshold, the deploy line and
the firing alert, pick up a new alert through its auto-refresh, and load nothing from elsewhere.
The same routes are then checked on PostgreSQL.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, create_engine

from atalaia.events import AlertEvent, utcnow
from atalaia.settings import Settings
from atalaia.storage.db import upgrade
from atalaia.storage.repository import store_alert
from monitors import dashboard
from monitors.server import WebServer
from monitors.web import create_app
from tests.conftest import free_port
from tests.unit.test_dashboard_data import NEW, OLD, Seeded, rules_file, seed

pytestmark = pytest.mark.integration

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Engine, Seeded]]:
    url = f"sqlite:///{tmp_path / 'dashboard.db'}"
    upgrade(url)
    engine = create_engine(url)
    seeded = seed(engine)
    settings = Settings(home=tmp_path, database_url=url, rules_file=rules_file(tmp_path), monitor_port=free_port())
    server = WebServer(create_app(settings, engine), "127.0.0.1", settings.monitor_port).start()
    try:
        yield f"http://127.0.0.1:{settings.monitor_port}", engine, seeded
    finally:
        server.stop()
        engine.dispose()


def _count(page: Any, selector: str) -> int:
    return int(page.locator(selector).count())


def test_dashboard_in_headless_chromium(served: tuple[str, Engine, Seeded], chromium: str, tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    base, engine, seeded = served
    console_errors: list[str] = []
    foreign: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1700})
            page.on("console", lambda msg: console_errors.append(msg.text) if msg.type == "error" else None)
            page.on("request", lambda req: None if req.url.startswith(base) else foreign.append(req.url))
            page.goto(f"{base}/?refresh_ms=1000", wait_until="load")
            page.wait_for_selector("body[data-loaded=true]", timeout=20_000)

            # Every chart has its series with points; nothing is empty on the seeded hour.
            for chart in dashboard.CHARTS:
                card = f"#chart-{chart.key}"
                assert _count(page, f"{card} path.series") >= 2, chart.key  # one line per model version at least
                assert _count(page, f"{card} circle.point") >= 10, chart.key
                assert _count(page, f"{card} .no-data") == 0, chart.key
                # The deploy of the new version is a vertical line on every chart.
                assert page.locator(f'{card} g.deploy-group[data-version="{NEW}"] line.deploy').count() == 1
            assert _count(page, "#chart-latency path.series") == 6  # p50/p95/p99 × two versions
            assert _count(page, "#chart-drift path.threshold") == 2  # one threshold line per version
            # Alert markers land on their metric's charts only.
            assert _count(page, '#chart-latency path.alert-marker[data-rule="latency_p95_high"]') == 2
            assert _count(page, '#chart-toxicity path.alert-marker[data-rule="toxicity_share_high"]') == 3
            assert _count(page, "#chart-rougeL path.alert-marker") == 0

            # The firing alert is in the open-alerts table, visible.
            row = page.locator(f'tr.alert-row.state-firing[data-rule="{seeded.firing_rule}"]')
            assert row.is_visible()
            assert "firing" in row.inner_text() and NEW in row.inner_text()
            assert page.locator("#open-count").inner_text() == "1"
            page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)

            # Filtering by model version leaves that version's lines only.
            page.select_option("#version", OLD)
            page.wait_for_function("document.querySelectorAll('#chart-latency path.series').length === 3")
            versions = page.eval_on_selector_all(
                "#chart-latency path.series", "els => [...new Set(els.map(e => e.dataset.version))]"
            )
            assert versions == [OLD]
            page.select_option("#version", "")

            # Auto-refresh: a new alert appears without reloading the page.
            now = utcnow()
            alert_id = uuid.uuid4()
            with engine.begin() as conn:
                store_alert(
                    conn,
                    AlertEvent(
                        alert_id=alert_id,
                        fingerprint="f" * 16,
                        rule="drift_detected",
                        state="firing",
                        severity="warning",
                        labels={"model_version": NEW},
                        value=0.03,
                        threshold=0.012,
                        started_at=now - timedelta(seconds=30),
                        ts=now,
                    ),
                )
            page.wait_for_selector('tr.alert-row.state-firing[data-rule="drift_detected"]', timeout=10_000)
            assert page.locator("#open-count").inner_text() == "2"
        finally:
            browser.close()
    assert not console_errors, console_errors
    assert not foreign, f"the page fetched from another host: {foreign}"
    assert (tmp_path / "dashboard.png").stat().st_size > 10_000


def test_dashboard_routes_on_postgres(fresh_pg: str, tmp_path: Path) -> None:
    engine = create_engine(fresh_pg)
    try:
        seeded = seed(engine)
        settings = Settings(home=tmp_path, database_url=fresh_pg, rules_file=rules_file(tmp_path))
        client = TestClient(create_app(settings, engine))
        assert client.get("/healthz").json()["status"] == "ok"
        for chart in dashboard.CHARTS:
            body = client.get("/api/dashboard/series", params={"name": chart.key, "since": "1h"}).json()
            assert {s["model_version"] for s in body["series"]} == {OLD, NEW}, chart.key
            assert all(s["points"] for s in body["series"]), chart.key
        alerts = client.get("/api/dashboard/alerts").json()
        assert [(a["rule"], a["state"]) for a in alerts["open"]] == [(seeded.firing_rule, "firing")]
        assert len(alerts["transitions"]) == 5
        assert [d["model_version"] for d in client.get("/api/dashboard/deploys").json()["deploys"]] == [NEW]
        assert client.get("/api/dashboard/versions").json()["model_versions"] == [OLD, NEW]
    finally:
        engine.dispose()


def test_atalaia_monitor_serves_the_dashboard_and_follows_deploys(isolated_settings: Settings) -> None:
    """`atalaia monitor` serves the app on ATALAIA_MONITOR_PORT; a deploy event on the models topic
    becomes a deploy line, and a second monitor on the same port keeps evaluating without it."""
    import httpx
    from kafka import KafkaProducer

    from atalaia.events import ModelEvent
    from atalaia.topics import ensure_topics
    from tests.integration.services import log_text, service, wait_until

    settings = isolated_settings
    upgrade(settings.database_url)
    ensure_topics(settings)
    base = f"http://127.0.0.1:{settings.monitor_port}"
    deploy = ModelEvent(type="deploy", model_version="smollm2@7", artefact_path="/m/7", reason="test")

    def health() -> dict[str, Any] | None:
        try:
            response = httpx.get(f"{base}/healthz", timeout=2)
        except httpx.HTTPError:
            return None
        return dict(response.json()) if response.status_code == 200 else None

    with service("monitor", settings):
        wait_until(lambda: (h := health()) and h["model_events"] == "caught up", 60, "the monitor's /healthz")
        assert "<title>Atalaia monitor</title>" in httpx.get(f"{base}/dashboard", timeout=5).text
        producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers)
        producer.send(settings.topic("models"), value=deploy.to_json()).get(timeout=30)
        producer.close()

        def deployed() -> list[Any]:
            body = httpx.get(f"{base}/api/dashboard/deploys", params={"since": "10m"}, timeout=5).json()
            return [d for d in body["deploys"] if d["model_version"] == "smollm2@7"]

        found = wait_until(deployed, 30, "the deploy event on the dashboard")
        assert found[0]["kind"] == "deploy" and found[0]["source"] == "models topic"

        # The port is taken: a second monitor logs it and still starts evaluating.
        second = settings.model_copy(update={"home": settings.home / "second"})
        with service("monitor", second):
            wait_until(lambda: "monitor web server not started" in log_text(second, "monitor"), 60, "the port error")
            assert "monitor started" in log_text(second, "monitor")
