"""Dashboard data queries (the read model, ``atalaia/storage/readmodel.py``) and routes on a
migrated SQLite database seeded with a realistic hour.

:func:`seed` is shared with the browser test (``tests/integration/test_dashboard_browser.py``):
two model versions (a deploy 20 minutes ago), 1-minute windows of every charted metric, drift
tests whose score crosses the threshold after the deploy, a resolved toxicity alert and a
firing latency alert.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, create_engine

from atalaia.events import AlertEvent, ModelEvent, utcnow
from atalaia.settings import Settings
from atalaia.storage import readmodel
from atalaia.storage import tables as t
from atalaia.storage.db import upgrade
from atalaia.storage.repository import insert_ignoring_duplicates, store_alert
from consumers.windows import window_start
from monitors import dashboard
from monitors.evaluator import fingerprint
from monitors.web import create_app

OLD, NEW = "smollm2@1", "smollm2@2"
WINDOW_METRICS = {
    # name: (value of the old version, value of the new one)
    "latency_ms": (800.0, 2400.0),
    "cost": (0.0004, 0.0006),
    "toxicity_response": (0.02, 0.05),
    "rougeL": (0.45, 0.30),
    "perplexity": (12.0, 19.0),
    "answer_length_ratio": (1.0, 1.4),  # the length group's chart (metric-group plugin)
}
DRIFT_THRESHOLD = 0.012


@dataclass
class Seeded:
    """What :func:`seed` wrote, for assertions."""

    now: datetime
    deploy_at: datetime
    windows: int
    drift_tests: int
    firing_rule: str
    firing_alert_id: str


def seed(engine: Engine, now: datetime | None = None) -> Seeded:
    """Fill a migrated database with 45 minutes of dashboard data ending at ``now``."""
    now = now or utcnow()
    deploy_at = now - timedelta(minutes=20)
    first = window_start(now - timedelta(minutes=45), 60)
    windows = []
    for i in range(44):
        start = first + timedelta(minutes=i)
        version = OLD if start < deploy_at else NEW
        for name, (old, new) in WINDOW_METRICS.items():
            base = old if version == OLD else new
            wobble = 1 + 0.1 * math.sin(i / 3)
            windows.append(
                {
                    "window_start": start,
                    "window_s": 60,
                    "model_version": version,
                    "name": name,
                    "count": 30 + i % 7,
                    "errors": 0,
                    "mean": base * wobble,
                    "p50": base * wobble * 0.9,
                    "p95": base * wobble * 1.6,
                    "p99": base * wobble * 2.0,
                    "updated_at": now,
                }
            )
    drift_rows = []
    for i in range(20):
        ts = now - timedelta(minutes=40) + timedelta(minutes=2 * i)
        version = OLD if ts < deploy_at else NEW
        score = 0.004 + 0.0005 * (i % 3) if version == OLD else 0.015 + 0.001 * i
        source = str(uuid.uuid4())
        for name, value in (("embedding_drift", score), ("embedding_drift_threshold", DRIFT_THRESHOLD)):
            drift_rows.append(
                {
                    "event_id": source,
                    "name": name,
                    "value": value,
                    "labels": {"threshold": f"{DRIFT_THRESHOLD:.6g}", "test": str(i + 1)},
                    "service": "regulations-assistant",
                    "model_version": version,
                    "ts": ts,
                    "created_at": ts,
                }
            )
    with engine.begin() as conn:
        insert_ignoring_duplicates(conn, t.metric_windows, windows)
        insert_ignoring_duplicates(conn, t.metrics, drift_rows)
        insert_ignoring_duplicates(
            conn,
            t.model_versions,
            [
                {
                    "version": version,
                    "parent": parent,
                    "status": status,
                    "artefact_path": f"/models/{version}",
                    "metrics": {},
                    "created_at": at - timedelta(minutes=5),
                    "activated_at": at,
                }
                for version, parent, status, at in (
                    (OLD, None, "retired", now - timedelta(hours=3)),
                    (NEW, OLD, "active", deploy_at),
                )
            ],
        )
        # A toxicity alert that came and went, and a latency alert firing now.
        resolved_id, firing_id = uuid.uuid4(), uuid.uuid4()
        transitions = [
            ("toxicity_share_high", resolved_id, "pending", 40, 0.07, 0.05),
            ("toxicity_share_high", resolved_id, "firing", 39, 0.08, 0.05),
            ("toxicity_share_high", resolved_id, "resolved", 33, 0.03, 0.05),
            ("latency_p95_high", firing_id, "pending", 15, 3900.0, 3000.0),
            ("latency_p95_high", firing_id, "firing", 14, 4100.0, 3000.0),
        ]
        started: dict[uuid.UUID, datetime] = {}
        for rule, alert_id, state, minutes_ago, value, threshold in transitions:
            ts = now - timedelta(minutes=minutes_ago)
            labels = {"model_version": OLD if rule.startswith("toxicity") else NEW}
            store_alert(
                conn,
                AlertEvent(
                    ts=ts,
                    alert_id=alert_id,
                    fingerprint=fingerprint(rule, labels),
                    rule=rule,
                    state=state,  # type: ignore[arg-type]
                    severity="critical" if rule.startswith("latency") else "warning",
                    labels=labels,
                    annotations={"summary": f"{rule.replace('_', ' ')} over the last minute"},
                    value=value,
                    threshold=threshold,
                    started_at=started.setdefault(alert_id, ts),
                ),
            )
    return Seeded(now, deploy_at, len(windows), 20, "latency_p95_high", str(firing_id))


RULES_YAML = """
rules:
  - {name: latency_p95_high, metric: latency_ms, aggregation: p95, threshold: 3000}
  - {name: toxicity_share_high, metric: toxicity_response, aggregation: mean, threshold: 0.05}
"""


def rules_file(directory: Path) -> Path:
    """A rule file naming the seeded alerts' rules, so markers land on their charts."""
    path = directory / "rules.yaml"
    path.write_text(RULES_YAML, encoding="utf-8")
    return path


@pytest.fixture
def seeded_db(tmp_path: Path) -> tuple[Engine, Seeded, Settings]:
    url = f"sqlite:///{tmp_path / 'dash.db'}"
    upgrade(url)
    engine = create_engine(url)
    settings = Settings(home=tmp_path, database_url=url, rules_file=rules_file(tmp_path))
    return engine, seed(engine), settings


@pytest.fixture
def client(seeded_db: tuple[Engine, Seeded, Settings]) -> TestClient:
    engine, _, settings = seeded_db
    return TestClient(create_app(settings, engine))


# -- queries ---------------------------------------------------------------------------------------
def test_window_series_splits_by_model_version_and_stat(seeded_db: tuple[Engine, Seeded, Settings]) -> None:
    engine, seeded, _ = seeded_db
    since = seeded.now - timedelta(hours=1)
    with engine.connect() as conn:
        series = readmodel.window_series(conn, "latency_ms", ("p50", "p95", "p99"), since, seeded.now)
    keys = {(s["model_version"], s["stat"]) for s in series}
    assert keys == {(v, stat) for v in (OLD, NEW) for stat in ("p50", "p95", "p99")}
    new_p95 = next(s for s in series if s["model_version"] == NEW and s["stat"] == "p95")
    # Points sit at the middle of each window and are in time order.
    times = [p[0] for p in new_p95["points"]]
    assert times == sorted(times) and times[0] % 60_000 == 30_000
    assert all(2400 * 1.6 * 0.85 < v < 2400 * 1.6 * 1.15 for _, v in new_p95["points"])


def test_derived_stats_rate_and_cost_per_hour(seeded_db: tuple[Engine, Seeded, Settings]) -> None:
    engine, seeded, _ = seeded_db
    since = seeded.now - timedelta(hours=1)
    with engine.connect() as conn:
        rate = readmodel.window_series(conn, "latency_ms", ("rate",), since, seeded.now)
        cost = readmodel.window_series(conn, "cost", ("per_hour",), since, seeded.now)
    rates = [v for s in rate for _, v in s["points"]]
    assert all(30 / 60 <= r <= 36 / 60 for r in rates)  # 30..36 requests per 1-minute window
    # mean * count is the window's spend; per hour is 60 windows of it.
    old_cost = next(s for s in cost if s["model_version"] == OLD)["points"][0][1]
    assert 0.0004 * 0.85 * 30 * 60 < old_cost < 0.0004 * 1.15 * 36 * 60


def test_drift_series_has_score_and_threshold(seeded_db: tuple[Engine, Seeded, Settings]) -> None:
    engine, seeded, _ = seeded_db
    with engine.connect() as conn:
        series = readmodel.drift_series(conn, seeded.now - timedelta(hours=1), seeded.now)
    thresholds = [s for s in series if s["role"] == "threshold"]
    scores = [s for s in series if s["stat"] == "score"]
    assert {s["model_version"] for s in thresholds} == {OLD, NEW}
    assert all(v == DRIFT_THRESHOLD for s in thresholds for _, v in s["points"])
    assert sum(len(s["points"]) for s in scores) == seeded.drift_tests
    new_scores = next(s for s in scores if s["model_version"] == NEW)["points"]
    assert all(v > DRIFT_THRESHOLD for _, v in new_scores)


def test_range_excludes_older_data(seeded_db: tuple[Engine, Seeded, Settings]) -> None:
    engine, seeded, _ = seeded_db
    with engine.connect() as conn:
        recent = readmodel.window_series(conn, "rougeL", ("mean",), seeded.now - timedelta(minutes=10), seeded.now)
        drift = readmodel.drift_series(conn, seeded.now - timedelta(minutes=10), seeded.now)
    assert {s["model_version"] for s in recent} == {NEW}
    assert 9 <= sum(len(s["points"]) for s in recent) <= 11
    assert all(p[0] >= readmodel.epoch_ms(seeded.now - timedelta(minutes=10)) for s in drift for p in s["points"])


def test_open_alerts_are_the_unresolved_ones(seeded_db: tuple[Engine, Seeded, Settings]) -> None:
    engine, seeded, _ = seeded_db
    with engine.connect() as conn:
        opened = readmodel.open_alerts(conn, {"latency_p95_high": "latency_ms"})
        transitions = readmodel.alert_transitions(conn, seeded.now - timedelta(hours=1), seeded.now, {})
    assert [(a["rule"], a["state"]) for a in opened] == [("latency_p95_high", "firing")]
    assert opened[0]["alert_id"] == seeded.firing_alert_id and opened[0]["metric"] == "latency_ms"
    assert opened[0]["acked_by"] is None
    assert [a["state"] for a in transitions] == ["pending", "firing", "resolved", "pending", "firing"]


def test_open_alerts_show_their_acknowledgement(seeded_db: tuple[Engine, Seeded, Settings]) -> None:
    engine, seeded, _ = seeded_db
    with engine.begin() as conn:
        conn.execute(
            t.alert_acks.insert().values(
                alert_id=seeded.firing_alert_id, acked_by="sre-on-call", comment="looking", ts=seeded.now
            )
        )
        opened = readmodel.open_alerts(conn, {})
    assert opened[0]["acked_by"] == "sre-on-call" and opened[0]["acked_at"] is not None


def test_deploys_merge_activations_and_model_events(seeded_db: tuple[Engine, Seeded, Settings]) -> None:
    engine, seeded, _ = seeded_db
    events = [
        # The deploy event of the activated version: one line, kept as the event.
        ModelEvent(type="deploy", model_version=NEW, ts=seeded.deploy_at + timedelta(seconds=2), reason="retrained"),
        ModelEvent(type="rollback", model_version=OLD, ts=seeded.now - timedelta(minutes=5), reason="manual"),
        ModelEvent(type="deploy", model_version="ancient@0", ts=seeded.now - timedelta(days=3)),
    ]
    with engine.connect() as conn:
        found = readmodel.deploys(conn, seeded.now - timedelta(hours=1), seeded.now, events)
    assert [(d["kind"], d["model_version"], d["source"]) for d in found] == [
        ("deploy", NEW, "models topic"),
        ("rollback", OLD, "models topic"),
    ]
    with engine.connect() as conn:
        only_table = readmodel.deploys(conn, seeded.now - timedelta(hours=1), seeded.now)
    assert [(d["kind"], d["model_version"]) for d in only_table] == [("activated", NEW)]


def test_versions_seen(seeded_db: tuple[Engine, Seeded, Settings]) -> None:
    engine, seeded, _ = seeded_db
    with engine.connect() as conn:
        assert readmodel.model_versions_seen(conn, seeded.now - timedelta(minutes=5), seeded.now) == [OLD, NEW]


def test_downsample_keeps_the_time_span() -> None:
    points = [(i * 1000, float(i)) for i in range(10_000)]
    out = readmodel.downsample(points, 500)
    assert len(out) == 500 and out[0][0] == 0 and out[-1][0] > 9_900_000
    assert [p[0] for p in out] == sorted(p[0] for p in out)


def test_metric_of_rules_survives_a_broken_rule_file() -> None:
    def broken() -> list[Any]:
        raise ValueError("bad rules")

    assert dashboard.metric_of_rules(broken) == {}


# -- routes ----------------------------------------------------------------------------------------
def test_page_and_static_files_are_served(client: TestClient) -> None:
    for path in ("/", "/dashboard"):
        page = client.get(path)
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert '<script src="/static/dashboard.js"' in page.text
    assert "renderChart" in client.get("/static/dashboard.js").text
    assert client.get("/static/dashboard.css").status_code == 200


def test_page_loads_nothing_from_another_host(client: TestClient) -> None:
    for path in ("/", "/static/dashboard.js", "/static/dashboard.css"):
        text = client.get(path).text
        assert "http://" not in text.replace("http://www.w3.org/2000/svg", "") and "https://" not in text, path


def test_healthz(client: TestClient) -> None:
    body = client.get("/healthz").json()
    assert body["status"] == "ok" and body["model_events"] is None


def test_healthz_is_503_when_the_database_is_gone(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'missing-dir' / 'x.db'}")
    response = TestClient(create_app(Settings(home=tmp_path), engine)).get("/healthz")
    assert response.status_code == 503 and response.json()["status"] == "unavailable"


def test_series_route(client: TestClient) -> None:
    body = client.get("/api/dashboard/series", params={"name": "latency", "since": "1h"}).json()
    assert body["title"] == "Latency" and body["unit"] == "ms"
    assert {s["stat"] for s in body["series"]} == {"p50", "p95", "p99"}
    only_new = client.get("/api/dashboard/series", params={"name": "latency", "model_version": NEW}).json()
    assert {s["model_version"] for s in only_new["series"]} == {NEW}
    drift = client.get("/api/dashboard/series", params={"name": "drift"}).json()
    assert {s["role"] for s in drift["series"]} == {"value", "threshold"}


def test_series_of_any_metric_name(client: TestClient) -> None:
    body = client.get("/api/dashboard/series", params={"name": "perplexity", "since": "30m"}).json()
    assert body["series"]
    unknown = client.get("/api/dashboard/series", params={"name": "no_such_metric"}).json()
    assert unknown["series"] == []


def test_bad_range_is_a_400(client: TestClient) -> None:
    response = client.get("/api/dashboard/series", params={"name": "latency", "since": "yesterday-ish"})
    assert response.status_code == 400 and "since must be" in response.json()["detail"]
    # A look-back `since` counts back from `until`; a timestamp after `until` is refused.
    late = (utcnow() - timedelta(minutes=10)).isoformat()
    assert client.get("/api/dashboard/alerts", params={"since": late, "until": "2h"}).status_code == 400


def test_alerts_route_maps_rules_to_metrics(client: TestClient) -> None:
    body = client.get("/api/dashboard/alerts", params={"since": "1h"}).json()
    assert [a["rule"] for a in body["open"]] == ["latency_p95_high"]
    assert {a["rule"]: a["metric"] for a in body["transitions"]} == {
        "toxicity_share_high": "toxicity_response",
        "latency_p95_high": "latency_ms",
    }


def test_charts_deploys_versions_routes(client: TestClient) -> None:
    charts = client.get("/api/dashboard/charts").json()["charts"]
    assert [c["key"] for c in charts] == [c.key for c in dashboard.CHARTS]
    deploys = client.get("/api/dashboard/deploys", params={"since": "1h"}).json()
    assert [d["model_version"] for d in deploys["deploys"]] == [NEW]
    assert deploys["model_events_followed"] is False
    assert client.get("/api/dashboard/versions").json()["model_versions"] == [OLD, NEW]


def test_deploys_route_uses_the_model_event_feed(seeded_db: tuple[Engine, Seeded, Settings]) -> None:
    from monitors.model_feed import ModelEventFeed

    engine, seeded, settings = seeded_db
    feed = ModelEventFeed(settings)  # not started: filled by hand, as its thread would
    feed.add(ModelEvent(type="rollback", model_version=OLD, ts=seeded.now - timedelta(minutes=2)))
    body = TestClient(create_app(settings, engine, model_events=feed)).get("/api/dashboard/deploys").json()
    assert body["model_events_followed"] is True
    assert [(d["kind"], d["model_version"]) for d in body["deploys"]] == [("activated", NEW), ("rollback", OLD)]


def test_long_ranges_are_averaged_in_the_database(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'long.db'}"
    upgrade(url)
    engine = create_engine(url)
    now = utcnow()
    first = window_start(now - timedelta(days=2), 60)
    rows = [
        {
            "window_start": first + timedelta(minutes=i),
            "window_s": 60,
            "model_version": OLD,
            "name": "latency_ms",
            "count": 10,
            "errors": 2,
            "mean": float(i % 2),  # alternating 0, 1: a bucket of whole pairs averages 0.5
            "p50": None,
            "p95": 100.0,
            "p99": None,
            "updated_at": now,
        }
        for i in range(2 * 1440)
    ]
    with engine.begin() as conn:
        insert_ignoring_duplicates(conn, t.metric_windows, rows)
        series = readmodel.window_series(
            conn, "latency_ms", ("mean", "p95", "p50", "rate"), now - timedelta(days=2), now, max_points=100
        )
    by_stat = {s["stat"]: s["points"] for s in series}
    assert set(by_stat) == {"mean", "p95", "rate"}  # p50 is NULL everywhere: no series
    bucket_s = readmodel.bucket_seconds(timedelta(days=2).total_seconds(), 60, 100)
    assert bucket_s == 1740 and len(by_stat["mean"]) <= 101
    inner = by_stat["mean"][1:-1]  # the edge buckets are partial
    assert all(abs(v - 0.5) < 0.02 for _, v in inner)
    assert all(v == 100.0 for _, v in by_stat["p95"]) and all(v == 12 / 60 for _, v in by_stat["rate"])
    assert all(ts % (bucket_s * 1000) == bucket_s * 500 for ts, _ in by_stat["p95"])
