"""Canary decisions on the metrics table, and the scheduler's job store and alert handling."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import delete, insert

from atalaia.events import AlertEvent, ModelEvent, utcnow
from atalaia.privacy import RETENTION_JOB
from atalaia.settings import Settings
from atalaia.storage import tables as t
from atalaia.storage.db import get_engine, upgrade
from retrain import canary, registry
from retrain.jobs import BIAS_JOB, CANARY_SWEEP_JOB, EVIDENTLY_JOB, PERIODIC_JOB, RETRAIN_JOB
from retrain.scheduler import build_scheduler, request_retrain, start_scheduler, wants_retrain


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    # The deploy-at-once canary (share 0): the new version serves everything within the window.
    s = Settings(home=tmp_path / "home", canary_min_events=10, canary_window_s=600, canary_share=0)
    upgrade(s.database_url)
    return s


def _deployed(settings: Settings, rouge_new: float, n: int = 20) -> str:
    """A parent with ROUGE-L 0.4 before the deploy, a child with ``rouge_new`` after it."""
    engine = get_engine(settings.database_url)
    now = utcnow()
    with engine.begin() as conn:
        for version, parent, status in (("m@base", None, "retired"), ("m@ft-1", "m@base", "active")):
            conn.execute(
                insert(t.model_versions).values(
                    version=version,
                    parent=parent,
                    status=status,
                    artefact_path="/x",
                    metrics={},
                    created_at=now - timedelta(hours=1),
                    activated_at=now - timedelta(minutes=5) if parent else None,
                )
            )
        rows = []
        for i in range(n):
            for version, ts, rouge in (
                ("m@base", now - timedelta(minutes=30, seconds=i), 0.4),
                ("m@ft-1", now - timedelta(minutes=4, seconds=-i), rouge_new),
            ):
                for name, value in (("rougeL", rouge), ("latency_ms", 100.0), ("toxicity_response", 0.01)):
                    rows.append(
                        {
                            "event_id": f"{version}-{i}-{name}"[:36],
                            "name": name,
                            "value": value,
                            "error": None,
                            "labels": None,
                            "service": "s",
                            "model_version": version,
                            "ts": ts,
                            "created_at": ts,
                        }
                    )
        conn.execute(insert(t.metrics), rows)
    return "m@ft-1"


def test_a_regressed_version_is_rolled_back(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[ModelEvent] = []
    monkeypatch.setattr(canary, "publish_model_event", lambda s, e, **_: events.append(e))
    version = _deployed(settings, rouge_new=0.2)
    verdict = canary.settle_canary(settings, version)
    assert verdict.decision == "rollback", verdict
    assert "rougeL" in verdict.reasons[0]
    engine = get_engine(settings.database_url)
    assert registry.get_version(engine, version)["status"] == "rolled_back"  # type: ignore[index]
    assert registry.get_version(engine, "m@base")["status"] == "active"  # type: ignore[index]
    assert [(e.type, e.model_version) for e in events] == [("rollback", "m@base")]


def test_a_healthy_version_passes_and_too_little_traffic_waits(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(canary, "publish_model_event", lambda s, e, **_: pytest.fail("no rollback expected"))
    version = _deployed(settings, rouge_new=0.42)
    assert canary.settle_canary(settings, version).decision == "pass"
    engine = get_engine(settings.database_url)
    row = registry.get_version(engine, version)
    assert row is not None and row["status"] == "active" and row["metrics"]["canary"]["decision"] == "pass"
    # Fewer live samples than needed while the parent has enough: wait, unless the window is over.
    strict = settings.model_copy(update={"canary_min_events": 15})
    with engine.begin() as conn:
        conn.execute(delete(t.metrics).where(t.metrics.c.model_version == version, t.metrics.c.event_id.like("%-1_-%")))
    assert canary.check_canary(engine, strict, version).decision == "wait"
    over = strict.model_copy(update={"canary_window_s": 1})
    assert canary.check_canary(engine, over, version).decision == "pass"


def test_retrain_alerts_are_recognised() -> None:
    base = dict(
        alert_id=uuid.uuid4(),
        fingerprint="f",
        rule="rouge",
        severity="warning",
        labels={},
        annotations={},
        started_at=utcnow(),
    )
    assert wants_retrain(AlertEvent(state="firing", action="retrain", **base), 60)
    assert not wants_retrain(AlertEvent(state="resolved", action="retrain", **base), 60)
    assert not wants_retrain(AlertEvent(state="firing", action=None, **base), 60)
    old = AlertEvent(state="firing", action="retrain", ts=utcnow() - timedelta(hours=2), **base)
    assert not wants_retrain(old, 60)


def test_jobs_live_in_the_database_and_survive_a_restart(settings: Settings) -> None:
    s = settings.model_copy(update={"retrain_cron": "0 3 * * *"})
    scheduler = start_scheduler(s)
    try:
        # Requested for later: the run must be stored, not started, in this test.
        request_retrain(scheduler, "alert:rouge", when=utcnow() + timedelta(hours=1))
        ids = {job.id for job in scheduler.get_jobs()}
        assert {PERIODIC_JOB, RETRAIN_JOB, RETENTION_JOB, CANARY_SWEEP_JOB} <= ids
    finally:
        scheduler.shutdown(wait=False)
    time.sleep(0.2)
    again = build_scheduler(s)
    again.start(paused=True)
    try:
        jobs = {job.id: job for job in again.get_jobs()}
        assert set(jobs) >= {PERIODIC_JOB, RETRAIN_JOB}
        assert jobs[RETRAIN_JOB].kwargs == {"trigger": "alert:rouge"}
        assert jobs[RETRAIN_JOB].func_ref == "retrain.jobs:alert_retrain"
        # The sweep that gives traffic splits started outside the scheduler their checks.
        assert jobs[CANARY_SWEEP_JOB].func_ref == "retrain.jobs:resume_canaries"
        assert jobs[PERIODIC_JOB].next_run_time.hour == 3
        # The retention job (ATALAIA_RETENTION_CRON, default 02:15 UTC) lives there too.
        assert jobs[RETENTION_JOB].func_ref == "atalaia.privacy:retention_job"
        assert (jobs[RETENTION_JOB].next_run_time.hour, jobs[RETENTION_JOB].next_run_time.minute) == (2, 15)
        # So does the Evidently report job (ATALAIA_EVIDENTLY_CRON, default 03:30 UTC).
        assert jobs[EVIDENTLY_JOB].func_ref == "retrain.jobs:evidently_report"
        assert (jobs[EVIDENTLY_JOB].next_run_time.hour, jobs[EVIDENTLY_JOB].next_run_time.minute) == (3, 30)
        # And the bias evaluation of the serving version (ATALAIA_BIAS_CRON, default 03:45 UTC).
        assert jobs[BIAS_JOB].func_ref == "retrain.jobs:bias_evaluation"
        assert (jobs[BIAS_JOB].next_run_time.hour, jobs[BIAS_JOB].next_run_time.minute) == (3, 45)
    finally:
        again.shutdown(wait=False)
    # Retention and reports off: the jobs go at the next start.
    off = start_scheduler(s.model_copy(update={"retention_days": 0, "evidently_cron": "", "bias_cron": ""}))
    try:
        assert not {RETENTION_JOB, EVIDENTLY_JOB, BIAS_JOB} & {job.id for job in off.get_jobs()}
    finally:
        off.shutdown(wait=False)


class _Recorder:
    """Stands in for the APScheduler scheduler: records the jobs added."""

    def __init__(self) -> None:
        self.jobs: list[dict[str, object]] = []

    def add_job(self, *args: object, **kwargs: object) -> None:
        self.jobs.append(kwargs)


def _firing(version: str) -> AlertEvent:
    return AlertEvent(
        alert_id=uuid.uuid4(),
        fingerprint=f"fp-{version}",
        rule="rouge_l_below_baseline",
        state="firing",
        severity="warning",
        labels={"model_version": version},
        annotations={},
        started_at=utcnow(),
        action="retrain",
    )


def test_a_still_firing_retrain_alert_is_rechecked_unless_a_run_holds_the_lock(settings: Settings) -> None:
    from retrain.scheduler import _recheck

    engine = get_engine(settings.database_url)
    base = registry.ensure_base_registered(engine, settings).version
    recorder = _Recorder()
    waiting = {"old": _firing("m@replaced"), "cur": _firing(base)}
    _recheck(settings, recorder, waiting)
    assert [j["kwargs"] for j in recorder.jobs] == [{"trigger": "alert:rouge_l_below_baseline (still firing)"}]
    assert list(waiting) == ["cur"]  # the replaced version's alert is forgotten

    with engine.begin() as conn:  # a live run holds the lock: it may be the answer to the alert
        conn.execute(
            insert(t.locks).values(name="retrain", holder="h", run_id=None, acquired_at=utcnow(), heartbeat_at=utcnow())
        )
    _recheck(settings, recorder, waiting)
    assert len(recorder.jobs) == 1


def _events(settings: Settings, speeds: dict[str, tuple[float, float | None, int, int]], n: int = 20) -> None:
    """Inference events of ``m@base`` (before the deploy) and ``m@ft-1`` (after it).

    ``speeds`` maps version to ``(latency_ms, ttft_ms or None, prompt_tokens, completion_tokens)``.
    """
    from atalaia.events import ChatMessage, InferenceEvent
    from atalaia.storage import repository

    now = utcnow()
    events = []
    for i in range(n):
        for version, ts in (
            ("m@base", now - timedelta(minutes=30, seconds=i)),
            ("m@ft-1", now - timedelta(minutes=4, seconds=-i)),
        ):
            latency, ttft, prompt, completion = speeds[version]
            events.append(
                InferenceEvent(
                    ts=ts,
                    service="s",
                    model_version=version,
                    messages=[ChatMessage(role="user", content="q")],
                    response="a",
                    latency_ms=latency,
                    time_to_first_token_ms=ttft,
                    prompt_tokens=prompt,
                    completion_tokens=completion,
                    cost=0.0,
                )
            )
    with get_engine(settings.database_url).begin() as conn:
        repository.store_inference_batch(conn, events, [])


def test_the_canary_judges_speed_per_phase_not_answer_length(settings: Settings) -> None:
    engine = get_engine(settings.database_url)
    version = _deployed(settings, rouge_new=0.42)
    # The parent: 450-token prompts, 500 ms to the first token, 40 tokens at 50 ms each. The new
    # version answers at the same speed but three times longer: latency triples, nothing regressed.
    _events(settings, {"m@base": (500 + 39 * 50, 500.0, 450, 40), "m@ft-1": (500 + 119 * 50, 500.0, 450, 120)})
    verdict = canary.check_canary(engine, settings, version)
    assert verdict.decision == "pass", verdict
    assert verdict.live["ttft_ms_per_prompt_token_p50"] == pytest.approx(500 / 450)
    assert verdict.live["ms_per_output_token_p50"] == pytest.approx(50.0)
    assert "latency_ms_p95" not in verdict.live  # latency is not judged when the phases are


@pytest.mark.parametrize(
    ("child", "needle"),
    [
        # Short answers hide a prefill twice as slow from the latency: 1000 ms vs 500 ms to the first token.
        ((1000 + 4 * 50, 1000.0, 450, 5), "time to first token per prompt token"),
        ((500 + 39 * 100, 500.0, 450, 40), "time per generated token"),
    ],
)
def test_a_slower_phase_rolls_back(settings: Settings, child: tuple[float, float, int, int], needle: str) -> None:
    engine = get_engine(settings.database_url)
    version = _deployed(settings, rouge_new=0.42)
    _events(settings, {"m@base": (500 + 39 * 50, 500.0, 450, 40), "m@ft-1": child})
    verdict = canary.check_canary(engine, settings, version)
    assert verdict.decision == "rollback", verdict
    assert any(needle in r for r in verdict.reasons), verdict.reasons


def test_events_without_ttft_fall_back_to_latency(settings: Settings) -> None:
    engine = get_engine(settings.database_url)
    version = _deployed(settings, rouge_new=0.42)
    # Old (schema 1) events: no time to first token on the parent's side; cache hits never count.
    _events(settings, {"m@base": (900.0, None, 450, 40), "m@ft-1": (950.0, 400.0, 450, 40)})
    samples = canary.speed_samples(engine, "m@base", limit=100)
    assert samples == {"ttft_ms_per_prompt_token": [], "ms_per_output_token": []}
    verdict = canary.check_canary(engine, settings, version)
    assert verdict.decision == "pass" and "latency_ms_p95" in verdict.live, verdict


def test_speed_is_not_judged_until_the_new_version_has_enough_events() -> None:
    base = {"ttft_ms_per_prompt_token": [1.0] * 40, "ms_per_output_token": [50.0] * 40, "latency_ms": [9.0] * 40}
    live = {"ttft_ms_per_prompt_token": [1.0] * 5, "ms_per_output_token": [50.0] * 5, "latency_ms": [9.0] * 40}
    verdict = canary.compare(live, base, min_events=30, max_drop=0.1, max_latency_ratio=1.5, max_toxicity_increase=0.05)
    assert verdict.decision == "wait" and "ttft_ms_per_prompt_token" in verdict.reasons[0]
