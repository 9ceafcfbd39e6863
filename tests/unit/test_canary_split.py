"""The canary with a traffic split: a run starts it, the sequential test on the same period's
metrics promotes, rolls back or (no verdict in the window) keeps the parent."""

from __future__ import annotations

import random
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import insert

from atalaia.events import ModelEvent, utcnow
from atalaia.settings import Settings
from atalaia.storage import tables as t
from atalaia.storage.db import get_engine, upgrade
from retrain import canary, registry, runner
from tests.unit.test_retrain_runner import FakeSteps


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    s = Settings(
        home=tmp_path / "home",
        retrain_min_feedback=5,
        retrain_cooldown_s=0,
        canary_share=0.2,
        canary_min_events=20,
        canary_window_s=600,
    )
    assert s.models_dir is not None
    s.generator_path.mkdir(parents=True)
    (s.generator_path / "config.json").write_text("{}")
    upgrade(s.database_url)
    return s


@pytest.fixture
def published(monkeypatch: pytest.MonkeyPatch) -> list[ModelEvent]:
    events: list[ModelEvent] = []
    monkeypatch.setattr(runner, "publish_model_event", lambda s, e, **_: events.append(e))
    monkeypatch.setattr(canary, "publish_model_event", lambda s, e, **_: events.append(e))
    return events


def _start(settings: Settings, published: list[ModelEvent]) -> str:
    outcome = runner.run_retrain(settings, trigger="manual", steps=FakeSteps())
    assert outcome.status == "deployed" and outcome.candidate_version, outcome
    return outcome.candidate_version


def _metrics(settings: Settings, version: str, name: str, values: list[float], start: timedelta) -> None:
    now = utcnow()
    rows = [
        {
            "event_id": str(uuid.uuid4()),
            "name": name,
            "value": v,
            "error": None,
            "labels": None,
            "service": "test",
            "model_version": version,
            "ts": now + start + timedelta(milliseconds=i),
            "created_at": now,
        }
        for i, v in enumerate(values)
    ]
    with get_engine(settings.database_url).begin() as conn:
        conn.execute(insert(t.metrics), rows)


def _rouge(rng: random.Random, mean: float, n: int) -> list[float]:
    return [min(max(rng.gauss(mean, 0.1), 0.0), 1.0) for _ in range(n)]


def test_a_run_starts_a_canary_instead_of_a_deploy(settings: Settings, published: list[ModelEvent]) -> None:
    version = _start(settings, published)
    assert [e.type for e in published] == ["canary"]
    event = published[0]
    assert event.model_version == version and event.canary_share == 0.2 and event.canary_mode == "split"
    assert event.previous_version == settings.model_version and event.artefact_path
    engine = get_engine(settings.database_url)
    row = registry.get_version(engine, version)
    assert row is not None and row["status"] == "candidate"  # the parent stays active meanwhile
    assert canary.canary_state(row) is not None
    assert registry.get_version(engine, settings.model_version)["status"] == "active"  # type: ignore[index]


def test_a_worse_candidate_is_rolled_back_on_the_same_periods_metrics(
    settings: Settings, published: list[ModelEvent]
) -> None:
    version = _start(settings, published)
    rng = random.Random(1)
    # The parent's earlier traffic (before the canary) was bad: it must not be the comparison.
    _metrics(settings, settings.model_version, "rougeL", _rouge(rng, 0.05, 200), -timedelta(hours=1))
    assert canary.settle_canary(settings, version).decision == "wait"  # no concurrent data yet
    _metrics(settings, settings.model_version, "rougeL", _rouge(rng, 0.4, 400), timedelta(seconds=1))
    _metrics(settings, version, "rougeL", _rouge(rng, 0.2, 100), timedelta(seconds=1))
    verdict = canary.settle_canary(settings, version)
    assert verdict.decision == "rollback", verdict
    assert verdict.tests["rougeL"]["outcome"] == "worse" and verdict.tests["rougeL"]["n_parent"] == 400
    assert published[-1].type == "rollback" and published[-1].model_version == settings.model_version
    engine = get_engine(settings.database_url)
    row = registry.get_version(engine, version)
    assert row is not None and row["status"] == "rolled_back"
    assert row["metrics"]["canary"]["decision"] == "rollback" and canary.canary_state(row) is None
    assert registry.get_version(engine, settings.model_version)["status"] == "active"  # type: ignore[index]


def test_a_candidate_as_good_as_its_parent_is_promoted(settings: Settings, published: list[ModelEvent]) -> None:
    version = _start(settings, published)
    rng = random.Random(2)
    # Earlier parent traffic was much better: a before/after comparison would roll back.
    _metrics(settings, settings.model_version, "rougeL", _rouge(rng, 0.9, 200), -timedelta(hours=1))
    _metrics(settings, settings.model_version, "rougeL", _rouge(rng, 0.4, 1200), timedelta(seconds=1))
    _metrics(settings, version, "rougeL", _rouge(rng, 0.42, 300), timedelta(seconds=1))
    verdict = canary.settle_canary(settings, version)
    assert verdict.decision == "promote", verdict
    assert published[-1].type == "deploy" and published[-1].model_version == version
    engine = get_engine(settings.database_url)
    assert registry.get_version(engine, version)["status"] == "active"  # type: ignore[index]
    assert registry.get_version(engine, settings.model_version)["status"] == "retired"  # type: ignore[index]


def test_no_verdict_in_the_window_keeps_the_parent(settings: Settings, published: list[ModelEvent]) -> None:
    version = _start(settings, published)
    rng = random.Random(3)
    _metrics(settings, settings.model_version, "rougeL", _rouge(rng, 0.4, 100), timedelta(seconds=1))
    _metrics(settings, version, "rougeL", _rouge(rng, 0.4, 5), timedelta(seconds=1))
    assert canary.settle_canary(settings, version).decision == "wait"
    over = settings.model_copy(update={"canary_window_s": 0.001})
    verdict = canary.settle_canary(over, version)
    assert verdict.decision == "timeout" and "parent is kept" in verdict.reasons[0]
    assert published[-1].type == "rollback" and published[-1].model_version == settings.model_version
    row = registry.get_version(get_engine(settings.database_url), version)
    assert row is not None and row["status"] == "rolled_back" and "timeout" in row["metrics"]["rollback_reason"]


def test_share_zero_keeps_the_deploy_at_once(settings: Settings, published: list[ModelEvent]) -> None:
    outcome = runner.run_retrain(settings.model_copy(update={"canary_share": 0.0}), trigger="manual", steps=FakeSteps())
    assert [e.type for e in published] == ["deploy"]
    row = registry.get_version(get_engine(settings.database_url), outcome.candidate_version or "")
    assert row is not None and row["status"] == "active"


def test_dashboard_and_report_show_the_split_and_the_verdict(settings: Settings, published: list[ModelEvent]) -> None:
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from atalaia.events import ChatMessage, InferenceEvent
    from atalaia.storage import repository
    from atalaia.storage.canaries import canary_summaries
    from composition.report.data import load_report_data
    from composition.report.html import render_html
    from monitors.dashboard import router

    version = _start(settings, published)
    engine = get_engine(settings.database_url)
    events = [
        InferenceEvent(
            service="test",
            model_version=v,
            messages=[ChatMessage(role="user", content="q")],
            response="a",
            latency_ms=10.0,
            prompt_tokens=3,
            completion_tokens=2,
            cost=0.0,
            metadata={"shadow": True} if shadow else {},
        )
        for v, shadow in [(version, False)] * 2 + [(version, True)] + [(settings.model_version, False)] * 5
    ]
    with engine.begin() as conn:
        repository.store_inference_batch(conn, events, [])
    with engine.connect() as conn:
        (running,) = canary_summaries(conn)
    assert running["state"] == "running" and running["decision"] == "wait" and running["share"] == 0.2
    assert running["requests"] == {version: 3, settings.model_version: 5, "shadow": 1}

    rng = random.Random(4)
    _metrics(settings, settings.model_version, "rougeL", _rouge(rng, 0.4, 400), timedelta(seconds=1))
    _metrics(settings, version, "rougeL", _rouge(rng, 0.1, 100), timedelta(seconds=1))
    assert canary.settle_canary(settings, version).decision == "rollback"
    with engine.connect() as conn:
        (ended,) = canary_summaries(conn)
    assert ended["state"] == "ended" and ended["decision"] == "rollback"
    assert ended["tests"]["rougeL"]["outcome"] == "worse"

    app = FastAPI()
    app.state.engine = engine
    app.include_router(router)
    body = TestClient(app).get("/api/dashboard/canaries", params={"since": "1h"}).json()
    assert [c["candidate"] for c in body["canaries"]] == [version]

    data = load_report_data(engine, utcnow() - timedelta(hours=1), utcnow() + timedelta(minutes=5))
    page = render_html(data)
    section = page.split('<section id="canaries">')[1].split("</section>")[0]
    assert "20% split" in section and "rollback" in section, section
    assert "3 / 5 (1 shadow)" in section
