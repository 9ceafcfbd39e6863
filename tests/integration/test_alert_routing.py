"""Alert routing against real receivers: Prometheus Alertmanager (Debian's), a signing-checking
webhook server, a receiver that is down at first; and the monitor process end to end (Kafka,
PostgreSQL, its delivery thread and HTTP API) honouring a silence.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from kafka import KafkaProducer
from sqlalchemy import Engine, select

from atalaia.events import AlertEvent, MetricEvent, utcnow
from atalaia.settings import Settings
from atalaia.storage import repository
from atalaia.storage import tables as t
from atalaia.storage.db import get_engine
from atalaia.topics import ensure_topics
from monitors.evaluator import RuleEvaluator
from monitors.routing.alertmanager import AlertmanagerReceiver
from monitors.routing.base import Receiver
from monitors.routing.delivery import DeliveryWorker, enqueue
from monitors.routing.webhook import SIGNATURE_HEADER, TIMESTAMP_HEADER, WebhookReceiver, verify_signature
from monitors.rules import Rule
from monitors.silences import create_silence
from tests.conftest import _missing, free_port
from tests.integration.services import log_text, service, wait_until

pytestmark = pytest.mark.integration

SECRET = "hook-secret"
RULE = Rule.model_validate(
    {
        "name": "latency_slow",
        "metric": "latency_ms",
        "aggregation": "max",
        "window": 60,
        "threshold": 100,
        "severity": "critical",
        "annotations": {"summary": "latency above 100 ms"},
        "on_no_data": "resolve",  # _transitions resolves by letting the window empty
    }
)


class Hook:
    """A real HTTP server that accepts a POST only with a valid, fresh Atalaia signature."""

    def __init__(self, secret: str = SECRET, port: int = 0) -> None:
        self.received: list[dict[str, Any]] = []
        self.rejected = 0
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                ok = verify_signature(
                    secret, body, self.headers.get(SIGNATURE_HEADER, ""), self.headers.get(TIMESTAMP_HEADER, "")
                )
                if ok:
                    hook.received.append(json.loads(body))
                else:
                    hook.rejected += 1
                self.send_response(200 if ok else 401)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def states(self) -> list[tuple[str, str]]:
        return [(p["alert"]["rule"], p["alert"]["state"]) for p in self.received]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook() -> Iterator[Hook]:
    h = Hook()
    yield h
    h.close()


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[str]:
    """A real Alertmanager on 127.0.0.1 with a free port, temp storage and a null receiver."""
    binary = shutil.which("prometheus-alertmanager")
    if binary is None:
        _missing("prometheus-alertmanager (scripts/system-deps.sh test)")
    config = tmp_path / "alertmanager.yml"
    config.write_text('route:\n  receiver: "null"\nreceivers:\n  - name: "null"\n')
    port = free_port()
    log = (tmp_path / "alertmanager.log").open("wb")
    proc = subprocess.Popen(
        [
            str(binary),
            f"--config.file={config}",
            f"--storage.path={tmp_path / 'am-data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",  # no gossip port: a single instance
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            try:
                return httpx.get(f"{url}/-/ready", timeout=1).status_code == 200
            except httpx.HTTPError:
                return proc.poll() is not None  # exited: stop waiting, fail below

        wait_until(ready, 30, "Alertmanager ready")
        assert proc.poll() is None, (tmp_path / "alertmanager.log").read_text()
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _settings(tmp_path: Path, db: str, **kw: Any) -> Settings:
    return Settings(home=tmp_path, database_url=db, alert_retry_initial_s=0.2, alert_retry_max_s=1.0, **kw)


def _transitions(values: list[float | None], step_s: float = 1.0) -> list[AlertEvent]:
    """Alert transitions of RULE for these latency values (None: no sample, time passes)."""
    ev = RuleEvaluator([RULE])
    now = utcnow() - timedelta(seconds=step_s * len(values))
    out: list[AlertEvent] = []
    for v in values:
        now += timedelta(seconds=step_s)
        if v is not None:
            ev.observe(
                MetricEvent(
                    source_event_id=uuid.uuid4(),
                    source_ts=now,
                    service="svc",
                    model_version="smollm2@base",
                    name="latency_ms",
                    value=v,
                )
            )
        out += ev.evaluate(now)
    return out


def _store(engine: Engine, alerts: list[AlertEvent], receivers: list[Receiver]) -> None:
    for alert in alerts:
        with engine.begin() as conn:
            repository.store_alert(conn, alert)
            enqueue(conn, alert, [r.name for r in receivers])


def _deliveries(engine: Engine) -> dict[str, dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(select(t.alert_deliveries).order_by(t.alert_deliveries.c.id)).mappings().all()
    return {r["receiver"]: dict(r) for r in rows}


def test_alert_reaches_a_real_alertmanager_and_resolves(tmp_path: Path, fresh_pg: str, alertmanager: str) -> None:
    engine = get_engine(fresh_pg)
    settings = _settings(tmp_path, fresh_pg, alertmanager_url=alertmanager)
    receiver = AlertmanagerReceiver(alertmanager, settings.alertmanager_resend_s, 5.0)
    worker = DeliveryWorker(engine, [receiver], settings, {RULE.name: RULE})
    transitions = _transitions([500.0, None, None])
    firing = [a for a in transitions if a.state != "resolved"]
    _store(engine, firing, [receiver])
    assert worker.run_once().delivered == 1

    def active() -> list[dict[str, Any]]:
        alerts = httpx.get(f"{alertmanager}/api/v2/alerts", params={"filter": 'alertname="latency_slow"'}).json()
        return [a for a in alerts if a["status"]["state"] == "active"]

    got = wait_until(active, 10, "the alert in Alertmanager")
    assert got[0]["labels"] == {"alertname": "latency_slow", "severity": "critical", "model_version": "smollm2@base"}
    assert got[0]["annotations"]["summary"] == "latency above 100 ms"
    assert got[0]["annotations"]["alert_id"] == str(firing[0].alert_id)
    assert got[0]["generatorURL"].endswith(f"/api/alerts/{firing[0].alert_id}")

    resolved = [a for a in _transitions([500.0] + [None] * 70) if a.state == "resolved"]
    resolved = [a.model_copy(update={"alert_id": firing[0].alert_id}) for a in resolved]
    _store(engine, resolved, [receiver])
    assert worker.run_once().delivered == 1
    wait_until(lambda: active() == [], 10, "Alertmanager to see the alert resolved")
    assert all(d["status"] == "delivered" for d in _deliveries(engine).values())
    receiver.close()


def test_webhook_receiver_checks_the_signature(tmp_path: Path, fresh_pg: str, hook: Hook) -> None:
    engine = get_engine(fresh_pg)
    settings = _settings(tmp_path, fresh_pg)
    good = WebhookReceiver(hook.url, SECRET, 5.0)
    forged = WebhookReceiver(hook.url, "not-the-secret", 5.0)
    forged.name = "forged"
    worker = DeliveryWorker(engine, [good, forged], settings, {RULE.name: RULE})
    _store(engine, _transitions([500.0]), [good, forged])
    worker.run_once()
    assert hook.states() == [("latency_slow", "firing")]
    payload = hook.received[0]
    assert payload["kind"] == "transition" and payload["alert"]["labels"]["alertname"] == "latency_slow"
    assert hook.rejected == 1
    rows = _deliveries(engine)
    assert rows["webhook"]["status"] == "delivered"
    assert rows["forged"]["status"] == "pending" and rows["forged"]["last_error"].startswith("HTTP 401")
    good.close()
    forged.close()


def test_a_receiver_that_is_down_receives_the_alert_once_it_is_up(tmp_path: Path, fresh_pg: str) -> None:
    engine = get_engine(fresh_pg)
    settings = _settings(tmp_path, fresh_pg)
    port = free_port()
    receiver = WebhookReceiver(f"http://127.0.0.1:{port}/hook", SECRET, 2.0)
    worker = DeliveryWorker(engine, [receiver], settings, {RULE.name: RULE})
    _store(engine, _transitions([500.0]), [receiver])
    assert worker.run_once().failed == 1  # nobody listens: connection refused
    row = _deliveries(engine)["webhook"]
    assert row["status"] == "pending" and row["attempts"] == 1 and "Connect" in row["last_error"]
    worker.start()  # the delivery thread retries with backoff
    try:
        wait_until(lambda: _deliveries(engine)["webhook"]["attempts"] >= 3, 10, "retries while nobody listens")
        late = Hook(port=port)
        try:
            wait_until(lambda: late.states() == [("latency_slow", "firing")], 15, "the late receiver to get the alert")
            wait_until(lambda: _deliveries(engine)["webhook"]["status"] == "delivered", 5, "the row delivered")
        finally:
            late.close()
    finally:
        worker.stop()


RULES = """
rules:
  - name: slow
    metric: latency_ms
    aggregation: mean
    window: 600
    threshold: 100
    min_samples: 3
  - name: costly
    metric: cost
    aggregation: sum
    window: 600
    threshold: 0.5
"""


def test_the_monitor_delivers_and_honours_a_silence(isolated_settings: Settings, fresh_pg: str, hook: Hook) -> None:
    rules = isolated_settings.home / "rules.yaml"
    rules.write_text(RULES)
    settings = isolated_settings.model_copy(
        update={
            "rules_file": rules,
            "database_url": fresh_pg,
            "webhook_url": hook.url,
            "webhook_secret": SECRET,
            "admin_token": "admin",
            "alert_retry_initial_s": 0.2,
        }
    )
    ensure_topics(settings)
    engine = get_engine(fresh_pg)
    silence = create_silence(engine, {"rule": "slow"}, created_by="test", comment="maintenance", duration_s=600)

    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers)
    for name, value, n in (("latency_ms", 500.0, 5), ("cost", 1.0, 1)):
        for _ in range(n):
            m = MetricEvent(
                source_event_id=uuid.uuid4(),
                source_ts=utcnow(),
                service="svc",
                model_version="v1",
                name=name,
                value=value,
            )
            producer.send(settings.topic("metrics"), value=m.to_json())
    producer.flush()
    producer.close()

    def stored() -> set[tuple[str, str]]:
        with engine.connect() as conn:
            return {(r.rule, r.state) for r in conn.execute(select(t.alerts.c.rule, t.alerts.c.state))}

    with service("monitor", settings):
        try:
            wait_until(lambda: {("slow", "firing"), ("costly", "firing")} <= stored(), 60, "both rules firing")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{log_text(settings, 'monitor')[-3000:]}") from None
        wait_until(lambda: hook.states() == [("costly", "firing")], 15, "the unsilenced alert delivered")
        time.sleep(2)
        assert hook.states() == [("costly", "firing")]  # the silenced one: evaluated, stored, not delivered

        base = f"http://127.0.0.1:{settings.monitor_port}"
        wait_until(lambda: _get(f"{base}/api/silences"), 20, "the monitor's API")
        assert httpx.delete(f"{base}/api/silences/{silence.silence_id}").status_code == 401
        r = httpx.delete(f"{base}/api/silences/{silence.silence_id}", headers={"Authorization": "Bearer admin"})
        assert r.status_code == 200 and r.json()["state"] == "expired"
        wait_until(lambda: ("slow", "firing") in hook.states(), 20, "the alert delivered once the silence expired")
        firing = _get(f"{base}/api/alerts?state=firing&current=true")["alerts"]
        assert {a["rule"] for a in firing} == {"slow", "costly"}


def _get(url: str) -> Any:
    try:
        r = httpx.get(url, timeout=2)
        return r.json() if r.status_code == 200 else None
    except httpx.HTTPError:
        return None
