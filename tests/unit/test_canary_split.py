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


def test_a_traffic_split_is_the_default(tmp_path: Path, published: list[ModelEvent]) -> None:
    s = Settings(home=tmp_path / "default", retrain_min_feedback=5, retrain_cooldown_s=0)
    assert (s.canary_share, s.canary_mode, s.canary_max_samples, s.canary_max_s) == (0.1, "split", 1000, 72 * 3600)
    s.generator_path.mkdir(parents=True)
    (s.generator_path / "config.json").write_text("{}")
    upgrade(s.database_url)
    version = _start(s, published)
    assert [(e.type, e.canary_share) for e in published] == [("canary", 0.1)]
    row = registry.get_version(get_engine(s.database_url), version)
    state = canary.canary_state(row)
    assert state is not None and state["horizon"]["max_samples"] == 1000 and state["horizon"]["max_s"] == 259_200


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


def test_no_verdict_by_the_time_limit_keeps_the_parent(settings: Settings, published: list[ModelEvent]) -> None:
    version = _start(settings, published)
    rng = random.Random(3)
    _metrics(settings, settings.model_version, "rougeL", _rouge(rng, 0.4, 100), timedelta(seconds=1))
    _metrics(settings, version, "rougeL", _rouge(rng, 0.4, 5), timedelta(seconds=1))
    assert canary.settle_canary(settings, version).decision == "wait"
    # The deploy-at-once window does not end a split: low traffic only makes it take longer.
    assert canary.settle_canary(settings.model_copy(update={"canary_window_s": 0.001}), version).decision == "wait"
    over = settings.model_copy(update={"canary_max_s": 0.001})
    verdict = canary.settle_canary(over, version)
    assert verdict.decision == "timeout" and "parent is kept" in verdict.reasons[0]
    assert "ATALAIA_CANARY_MAX_S" in verdict.reasons[0], verdict.reasons
    assert "rougeL (candidate 5 / parent 100 samples)" in verdict.reasons[0], verdict.reasons
    assert published[-1].type == "rollback" and published[-1].model_version == settings.model_version
    row = registry.get_version(get_engine(settings.database_url), version)
    assert row is not None and row["status"] == "rolled_back" and "timeout" in row["metrics"]["rollback_reason"]
    assert row["metrics"]["canary"]["samples"] == {"rougeL": {"candidate": 5, "parent": 100}}


def test_no_verdict_at_the_sample_budget_keeps_the_parent(settings: Settings, published: list[ModelEvent]) -> None:
    budget = settings.model_copy(update={"canary_max_samples": 150})
    version = _start(budget, published)
    rng = random.Random(5)
    # A candidate right at the margin (10 % below 0.4) stays undecided however long it runs.
    _metrics(settings, settings.model_version, "rougeL", _rouge(rng, 0.4, 600), timedelta(seconds=1))
    _metrics(settings, version, "rougeL", _rouge(rng, 0.36, 100), timedelta(seconds=1))
    waiting = canary.settle_canary(budget, version)
    assert waiting.decision == "wait" and waiting.samples == {"rougeL": {"candidate": 100, "parent": 600}}
    row = registry.get_version(get_engine(settings.database_url), version)
    assert row is not None and row["metrics"]["canary_progress"]["samples"]["rougeL"]["candidate"] == 100
    assert row["metrics"]["canary_progress"]["horizon"]["max_samples"] == 150
    _metrics(settings, version, "rougeL", _rouge(rng, 0.36, 60), timedelta(seconds=2))
    verdict = canary.settle_canary(budget, version)
    assert verdict.decision == "timeout", verdict
    assert verdict.reasons == [
        "no verdict at the sample budget of 150 per arm (ATALAIA_CANARY_MAX_SAMPLES) on rougeL "
        "(candidate 160 / parent 600 samples); the parent is kept"
    ]
    assert published[-1].type == "rollback" and published[-1].model_version == settings.model_version
    row = registry.get_version(get_engine(settings.database_url), version)
    assert row is not None and row["status"] == "rolled_back" and "sample budget" in row["metrics"]["rollback_reason"]


def test_a_verdict_before_the_horizon_ends_the_split(settings: Settings, published: list[ModelEvent]) -> None:
    # A large budget and time limit: a clear difference decides long before either.
    roomy = settings.model_copy(update={"canary_max_samples": 100_000, "canary_max_s": 10 * 86_400})
    worse = _start(roomy, published)
    rng = random.Random(6)
    _metrics(settings, settings.model_version, "rougeL", _rouge(rng, 0.4, 500), timedelta(seconds=1))
    _metrics(settings, worse, "rougeL", _rouge(rng, 0.2, 60), timedelta(seconds=1))
    assert canary.settle_canary(roomy, worse).decision == "rollback"
    better = _start(roomy, published)
    _metrics(settings, better, "rougeL", _rouge(rng, 0.45, 300), timedelta(seconds=3))
    _metrics(settings, settings.model_version, "rougeL", _rouge(rng, 0.4, 800), timedelta(seconds=3))
    assert canary.settle_canary(roomy, better).decision == "promote"


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
    assert running["horizon"]["max_samples"] == settings.canary_max_samples and running["horizon"]["ends_by"]

    rng = random.Random(4)
    _metrics(settings, settings.model_version, "rougeL", _rouge(rng, 0.4, 400), timedelta(seconds=1))
    _metrics(settings, version, "rougeL", _rouge(rng, 0.1, 100), timedelta(seconds=1))
    assert canary.settle_canary(settings, version).decision == "rollback"
    with engine.connect() as conn:
        (ended,) = canary_summaries(conn)
    assert ended["state"] == "ended" and ended["decision"] == "rollback"
    assert ended["tests"]["rougeL"]["outcome"] == "worse"
    assert ended["samples"]["rougeL"] == {"candidate": 100, "parent": 400}

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
    assert "samples candidate / parent: rougeL 100 / 400" in section, section
    assert f"horizon (no verdict: parent kept) {settings.canary_max_samples} samples per arm or " in section, section


def test_a_split_started_outside_the_scheduler_gets_its_checks(
    settings: Settings, published: list[ModelEvent], monkeypatch: pytest.MonkeyPatch
) -> None:
    from retrain import jobs, scheduler

    class Scheduler:
        """Stands in for APScheduler: the jobs by id."""

        def __init__(self) -> None:
            self.jobs: dict[str, dict[str, object]] = {}

        def get_job(self, job_id: str) -> object:
            return self.jobs.get(job_id)

        def add_job(self, func: str, trigger: str, **kwargs: object) -> None:
            self.jobs[str(kwargs["id"])] = {"func": func, **kwargs}

    fake = Scheduler()
    monkeypatch.setattr(jobs, "load_settings", lambda: settings)
    monkeypatch.setattr(scheduler, "get_running_scheduler", lambda: fake)
    version = _start(settings, published)  # as `atalaia retrain --now` from a shell: no job added
    assert jobs.resume_canaries() == [version]
    job = fake.jobs[jobs.CANARY_PREFIX + version]
    assert job["func"] == "retrain.jobs:canary_check" and job["kwargs"] == {"version": version}
    assert jobs.resume_canaries() == []  # it has its job now
