"""The alert API router (on a tiny app and on the monitor's app) and `atalaia alerts` on SQLite."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine, create_engine
from typer.testing import CliRunner

from atalaia.events import AlertEvent, utcnow
from atalaia.settings import Settings
from atalaia.storage import repository
from atalaia.storage import tables as t
from composition.cli.main import app as cli
from monitors import api

TOKEN = "admin-secret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _alert(state: str, alert_id: uuid.UUID, at: datetime, version: str = "v1", rule: str = "slow") -> AlertEvent:
    return AlertEvent(
        ts=at,
        alert_id=alert_id,
        fingerprint=f"fp-{rule}-{version}",
        rule=rule,
        state=state,  # type: ignore[arg-type]
        severity="warning" if rule == "slow" else "critical",
        labels={"alertname": rule, "model_version": version},
        annotations={"summary": "s"},
        value=2.0,
        threshold=1.0,
        started_at=at,
    )


@pytest.fixture
def db(tmp_path: Path) -> tuple[Engine, str, list[str]]:
    url = f"sqlite:///{tmp_path / 'atalaia.db'}"
    engine = create_engine(url)
    t.metadata.create_all(engine)
    now = utcnow()
    ids = [uuid.uuid4() for _ in range(3)]
    events = [
        _alert("pending", ids[0], now - timedelta(hours=3)),
        _alert("firing", ids[0], now - timedelta(hours=2)),
        _alert("pending", ids[1], now - timedelta(minutes=30), version="v2"),
        _alert("firing", ids[1], now - timedelta(minutes=29), version="v2"),
        _alert("resolved", ids[1], now - timedelta(minutes=10), version="v2"),
        _alert("firing", ids[2], now - timedelta(minutes=5), rule="toxic"),
    ]
    with engine.begin() as conn:
        for e in events:
            repository.store_alert(conn, e)
    return engine, url, [str(i) for i in ids]


@pytest.fixture
def client(db: tuple[Engine, str, list[str]], tmp_path: Path) -> TestClient:
    app = FastAPI()
    app.state.engine = db[0]
    app.state.settings = Settings(home=tmp_path, admin_token=TOKEN)
    app.include_router(api.router)
    return TestClient(app)


def test_list_and_filter_alerts(client: TestClient, db: tuple[Engine, str, list[str]]) -> None:
    rows = client.get("/api/alerts").json()["alerts"]
    assert len(rows) == 6 and rows[0]["rule"] == "toxic"  # newest first
    firing_now = client.get("/api/alerts", params={"state": "firing", "current": "true"}).json()["alerts"]
    assert {r["alert_id"] for r in firing_now} == {db[2][0], db[2][2]}
    assert len(client.get("/api/alerts", params={"model_version": "v2"}).json()["alerts"]) == 3
    assert len(client.get("/api/alerts", params={"severity": "critical"}).json()["alerts"]) == 1
    assert len(client.get("/api/alerts", params={"since": "1h"}).json()["alerts"]) == 4
    assert client.get("/api/alerts", params={"state": "nope"}).status_code == 400
    assert client.get("/api/alerts", params={"since": "whenever"}).status_code == 400
    one = client.get(f"/api/alerts/{db[2][1]}").json()
    assert one["state"] == "resolved" and [x["state"] for x in one["transitions"]] == ["pending", "firing", "resolved"]
    assert client.get("/api/alerts/nope").status_code == 404


def test_mutating_routes_need_the_admin_token(client: TestClient, db: tuple[Engine, str, list[str]]) -> None:
    body = {"matchers": {"rule": "slow"}, "created_by": "me", "duration_s": 60}
    assert client.post("/api/silences", json=body).status_code == 401
    assert client.post("/api/silences", json=body, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.post(f"/api/alerts/{db[2][0]}/ack", json={"by": "me"}).status_code == 401
    assert client.delete("/api/silences/x").status_code == 401
    assert client.get("/api/silences").status_code == 200  # reads are open


def test_admin_routes_are_off_without_a_token(db: tuple[Engine, str, list[str]], tmp_path: Path) -> None:
    app = FastAPI()
    app.state.engine, app.state.settings = db[0], Settings(home=tmp_path)
    app.include_router(api.router)
    r = TestClient(app).post("/api/silences", json={"matchers": {"rule": "x"}, "created_by": "me", "duration_s": 1})
    assert r.status_code == 401 and "disabled" in r.json()["detail"]


def test_silences_and_acks_over_http(client: TestClient, db: tuple[Engine, str, list[str]]) -> None:
    matchers = {"rule": "slow", "model_version": "v1"}
    body = {"matchers": matchers, "created_by": "me", "comment": "deploy", "duration_s": 600}
    created = client.post("/api/silences", json=body, headers=AUTH)
    assert created.status_code == 201 and created.json()["state"] == "active"
    sid = created.json()["silence_id"]
    assert [s["silence_id"] for s in client.get("/api/silences").json()["silences"]] == [sid]
    assert client.post("/api/silences", json=body | {"matchers": {}}, headers=AUTH).status_code == 422
    bad = client.post("/api/silences", json=body | {"matchers": {"1x": "y"}}, headers=AUTH)
    assert bad.status_code == 400 and "matcher name" in bad.json()["detail"]
    assert client.post("/api/silences", json={**body, "duration_s": None}, headers=AUTH).status_code == 400
    expired = client.delete(f"/api/silences/{sid}", headers=AUTH)
    assert expired.status_code == 200 and expired.json()["state"] == "expired"
    assert client.get("/api/silences").json()["silences"] == []
    assert len(client.get("/api/silences", params={"all": "true"}).json()["silences"]) == 1
    assert client.delete("/api/silences/nope", headers=AUTH).status_code == 404

    acked = client.post(f"/api/alerts/{db[2][0]}/ack", json={"by": "oncall", "comment": "on it"}, headers=AUTH)
    assert acked.status_code == 200 and acked.json()["ack"]["by"] == "oncall"
    again = client.post(f"/api/alerts/{db[2][0]}/ack", json={"by": "someone"}, headers=AUTH)
    assert again.json()["ack"]["by"] == "oncall"  # the first acknowledgement stays
    assert client.post("/api/alerts/nope/ack", json={"by": "x"}, headers=AUTH).status_code == 404
    rows = client.get("/api/alerts", params={"rule": "slow", "model_version": "v1"}).json()["alerts"]
    assert all(r["ack"]["by"] == "oncall" for r in rows)
    assert client.get("/api/deliveries").json() == {"deliveries": []}


def test_the_monitor_app_includes_the_router(db: tuple[Engine, str, list[str]], tmp_path: Path) -> None:
    from monitors.web import create_app

    app = create_app(Settings(home=tmp_path, admin_token=TOKEN), db[0])
    client = TestClient(app)
    assert len(client.get("/api/alerts").json()["alerts"]) == 6
    assert client.post("/api/silences", json={"matchers": {"rule": "x"}, "created_by": "me"}).status_code == 401


# -- CLI -----------------------------------------------------------------------------------------
@pytest.fixture
def env(db: tuple[Engine, str, list[str]], tmp_path: Path) -> dict[str, str]:
    return {"ATALAIA_DATABASE_URL": db[1], "ATALAIA_HOME": str(tmp_path), "ATALAIA_LOG_JSON": "false"}


def _run(args: list[str], env: dict[str, str], code: int = 0) -> str:
    result = CliRunner().invoke(cli, args, env=env)
    assert result.exit_code == code, result.output
    return result.stdout


def test_cli_list_filters(env: dict[str, str], db: tuple[Engine, str, list[str]]) -> None:
    bare = _run(["alerts"], env)
    assert "toxic" in bare and "slow" in bare
    rows = [json.loads(line) for line in _run(["alerts", "list", "--json"], env).splitlines()]
    assert len(rows) == 6
    current = _run(["alerts", "list", "--json", "--state", "firing", "--current"], env).splitlines()
    assert {json.loads(x)["alert_id"] for x in current} == {db[2][0], db[2][2]}
    assert len(_run(["alerts", "list", "--json", "--model-version", "v2"], env).splitlines()) == 3
    assert len(_run(["alerts", "list", "--json", "--severity", "critical"], env).splitlines()) == 1
    assert len(_run(["alerts", "list", "--json", "--since", "1h", "--rule", "slow"], env).splitlines()) == 3
    _run(["alerts", "list", "--state", "bad"], env, code=2)
    _run(["alerts", "list", "--since", "whenever"], env, code=2)


def test_cli_silence_list_unsilence(env: dict[str, str]) -> None:
    sid = _run(
        ["alerts", "silence", "rule=slow", "model_version=v1", "--duration", "30m", "--comment", "x", "--by", "me"],
        env,
    ).strip()
    uuid.UUID(sid)
    listed = [json.loads(x) for x in _run(["alerts", "silences", "--json"], env).splitlines()]
    assert listed[0]["silence_id"] == sid and listed[0]["matchers"] == {"rule": "slow", "model_version": "v1"}
    assert listed[0]["created_by"] == "me" and listed[0]["state"] == "active"
    ends = datetime.fromisoformat(listed[0]["ends_at"])
    assert timedelta(minutes=29) < ends - datetime.now(UTC) <= timedelta(minutes=30)
    assert sid[:8] in _run(["alerts", "silences"], env)
    _run(["alerts", "unsilence", sid], env)
    assert _run(["alerts", "silences", "--json"], env).strip() == ""
    assert json.loads(_run(["alerts", "silences", "--all", "--json"], env))["state"] == "expired"
    _run(["alerts", "silence", "slow"], env, code=2)
    _run(["alerts", "silence", "rule=slow", "--duration", "soon"], env, code=2)
    _run(["alerts", "unsilence", "nope"], env, code=1)


def test_cli_ack_by_id_or_prefix(env: dict[str, str], db: tuple[Engine, str, list[str]]) -> None:
    _run(["alerts", "ack", db[2][2][:8], "--by", "oncall", "--comment", "looking"], env)
    row = json.loads(_run(["alerts", "list", "--json", "--rule", "toxic"], env))
    assert row["ack"]["by"] == "oncall" and row["ack"]["comment"] == "looking"
    _run(["alerts", "ack", "ffffffff"], env, code=1)
