"""The scoring budget: pure controller with fake clocks, time-stratified drift sample, and the
scorer storing each row's sampling fraction (fake models that burn real CPU)."""

from __future__ import annotations

import gc
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from atalaia.events import ChatMessage, InferenceEvent, MetricEvent
from atalaia.metrics.budget import ScoringBudget, TimeStratifiedSampler, fair_fractions
from atalaia.settings import Settings
from atalaia.storage import repository
from atalaia.storage import tables as t
from atalaia.storage.db import get_engine, upgrade
from consumers.gc_pauses import collector_cpu_seconds
from consumers.scoring import BatchScorer
from consumers.windows import materialize

T0 = 1_800_000_000.0


def feed(budget: ScoringBudget, rate: float, seconds: float, batch: int = 50, lag_s: float = 0.0) -> None:
    """Batches of ``batch`` events arriving at ``rate`` per second of event time, seen ``lag_s`` late."""
    ts = T0
    for _ in range(int(rate * seconds / batch)):
        ts += batch / rate
        budget.update(batch, ts, now=ts + lag_s)


def test_fractions_fit_the_budget_and_cheap_groups_are_never_sampled() -> None:
    budget = ScoringBudget(0.8, ["perplexity", "toxicity"])
    budget.observe("operational", 0.0001, 50)  # cheap: 2 µs per event
    budget.observe("perplexity", 5.0, 50)  # 0.1 s per event
    budget.observe("toxicity", 0.05, 50)  # 1 ms per event
    feed(budget, rate=100, seconds=30)
    assert budget.rate == pytest.approx(100)
    assert budget.fraction("operational") == 1.0
    # Toxicity needs less than an equal share: it keeps every event; perplexity gets the rest.
    assert budget.fraction("toxicity") == 1.0
    expected = (0.8 / 100 - 0.000002 - 0.001) / 0.1
    assert budget.fraction("perplexity") == pytest.approx(expected, rel=1e-6)
    spent = 100 * (0.000002 + 0.001 + budget.fraction("perplexity") * 0.1)
    assert spent == pytest.approx(0.8)
    assert budget.demand() == pytest.approx(100 * (0.000002 + 0.001 + 0.1))


def test_below_capacity_every_event_is_scored() -> None:
    budget = ScoringBudget(0.8, ["perplexity"])
    budget.observe("perplexity", 0.1, 10)  # 10 ms per event: 80 events/s fit
    feed(budget, rate=20, seconds=30, batch=10)
    assert budget.fraction("perplexity") == 1.0


def test_a_lagging_worker_plans_to_drain_its_backlog() -> None:
    keeping_up = ScoringBudget(0.8, ["perplexity"])
    lagging = ScoringBudget(0.8, ["perplexity"])
    for b in (keeping_up, lagging):
        b.observe("perplexity", 5.0, 50)
    feed(keeping_up, rate=100, seconds=30)
    feed(lagging, rate=100, seconds=30, lag_s=60.0)
    assert lagging.lag_s == pytest.approx(60.0)
    # 100/s plus 6,000 events drained over catch_up_s (15 s)
    assert lagging.planned_rate() == pytest.approx(100.0 * (1 + 60.0 / lagging.catch_up_s))
    assert lagging.fraction("perplexity") == pytest.approx(keeping_up.fraction("perplexity") / 5)


def test_the_rate_is_measured_on_event_time_not_on_the_workers_speed() -> None:
    """Draining an hour-old backlog in a burst: the events' times advance at the producers' rate."""
    budget = ScoringBudget(0.8, ["perplexity"])
    ts = T0
    for i in range(100):
        ts += 50 / 30.0  # 30 events per second of event time
        budget.update(50, ts, now=T0 + 3600 + i * 0.01)  # processed 100 batches in one second
    assert budget.rate == pytest.approx(30.0)
    assert budget.lag_s > 3000


def test_the_first_batch_gives_a_rate_from_its_own_spread() -> None:
    budget = ScoringBudget(0.8, ["perplexity"])
    budget.update(200, T0 + 10.0, now=T0 + 10.0, oldest_ts=T0 + 0.05)
    assert budget.rate == pytest.approx(20.0)
    single = ScoringBudget(0.8, ["perplexity"])
    single.update(1, T0, now=T0, oldest_ts=T0)
    assert single.rate is None
    burst = ScoringBudget(0.8, ["perplexity"])  # ten events sent at once: no rate yet ...
    burst.observe("perplexity", 0.05, 1)
    burst.update(10, T0 + 0.01, now=T0 + 0.01, oldest_ts=T0)
    assert burst.rate is None and burst.fraction("perplexity") == 1.0  # ... and cheap enough to score all


def test_before_the_rate_is_known_a_big_first_batch_is_sampled_to_fit_the_catch_up_time() -> None:
    # 200 events within 0.1 s, perplexity at 0.2 s each: scoring them all would take 40 s.
    budget = ScoringBudget(0.8, ["perplexity"])
    budget.observe("perplexity", 0.2, 1)
    budget.update(200, T0 + 0.1, now=T0 + 0.1, oldest_ts=T0)
    assert budget.rate is None
    planned = 199 / budget.catch_up_s  # as if they came over the catch-up time
    assert budget.fraction("perplexity") == pytest.approx(0.8 / (planned * 0.2))
    # Once the rate is measured, it alone is planned for.
    budget.update(100, T0 + 1.0, now=T0 + 1.0, oldest_ts=T0 + 0.5)
    assert budget.rate is not None and budget.planned_rate() == budget.rate


def test_traffic_after_a_pause_is_not_measured_over_the_pause() -> None:
    # One probe event, then a minute later a stream at 200/s: 90 events in 0.45 s.
    budget = ScoringBudget(0.8, ["perplexity"])
    budget.observe("perplexity", 0.5, 1)
    budget.update(1, T0, now=T0, oldest_ts=T0)
    budget.update(90, T0 + 60.45, now=T0 + 60.5, oldest_ts=T0 + 60.0)
    assert budget.rate == pytest.approx(89 / budget.catch_up_s)  # not 90 / 60.45 s
    assert budget.fraction("perplexity") < 0.5


def test_a_handful_of_events_at_once_is_scored_in_full() -> None:
    # Ten events sent together (a test, a first user), perplexity at 0.5 CPU-s each: all scored.
    budget = ScoringBudget(0.8, ["perplexity"])
    budget.observe("perplexity", 0.5, 1)
    budget.update(10, T0 + 0.01, now=T0 + 0.01, oldest_ts=T0)
    assert budget.fraction("perplexity") == 1.0


def test_no_budget_unknown_costs_and_floor() -> None:
    off = ScoringBudget(0.0, ["perplexity"])
    off.observe("perplexity", 10.0, 1)
    feed(off, rate=1000, seconds=5)
    assert off.fraction("perplexity") == 1.0
    fresh = ScoringBudget(0.8, ["perplexity"])
    feed(fresh, rate=1000, seconds=5)
    assert fresh.fraction("perplexity") == 1.0  # not measured yet
    fresh.observe("perplexity", 100.0, 1)
    feed(fresh, rate=1000, seconds=5)
    assert fresh.fraction("perplexity") == fresh.floor() == pytest.approx(fresh.min_scored_per_s / 1000)
    assert fair_fractions({"a": 2.0, "b": 2.0}, 2.0, 0.0) == {"a": 0.5, "b": 0.5}


def test_cost_is_a_moving_average() -> None:
    budget = ScoringBudget(1.0, ["x"], alpha=0.5)
    budget.observe("x", 1.0, 10)
    budget.observe("x", 3.0, 10)
    budget.observe("x", 0.0, 0)  # nothing scored: no measurement
    assert budget.costs["x"] == pytest.approx(0.2)


def test_time_stratified_sample_is_spread_over_time_not_over_the_burst() -> None:
    sampler = TimeStratifiedSampler()
    # 1,000 events in the first 10 s (a burst), then 100 over the next 90 s: rate 11/s, fraction 0.1.
    times = [T0 + i * 0.01 for i in range(1000)] + [T0 + 10 + i * 0.9 for i in range(100)]
    taken = [ts for ts in times if sampler.take("m@1", ts, 0.1, rate=11.0)]
    in_burst = sum(ts < T0 + 10 for ts in taken)
    after = len(taken) - in_burst
    # One event per ~0.91 s of event time: the quiet 90 s weigh as much as they last.
    assert 10 <= in_burst <= 12 and 90 <= after <= 100
    assert TimeStratifiedSampler().take("m@1", T0, 1.0, rate=11.0)
    assert sampler.take("m@2", T0, 0.1, rate=11.0)  # each model version is its own stream


class BusyPerplexity:
    """Burns ``cost_s`` of CPU per text, like a real model would."""

    def __init__(self, cost_s: float) -> None:
        self.cost_s = cost_s

    def score(self, texts: list[str]) -> list[float]:
        out = []
        for _ in texts:
            end = time.process_time() + self.cost_s
            while time.process_time() < end:
                pass
            out.append(10.0)
        return out


def _events(n: int, start: datetime, rate: float) -> list[InferenceEvent]:
    return [
        InferenceEvent(
            ts=start + timedelta(seconds=i / rate),
            service="svc",
            model_version="m@1",
            messages=[ChatMessage(role="user", content=f"question {i}")],
            response="an answer of a few words",
            latency_ms=10.0,
            prompt_tokens=3,
            completion_tokens=5,
            cost=0.0,
        )
        for i in range(n)
    ]


def _scorer(tmp_path: Path, **settings: object) -> BatchScorer:
    s = Settings(home=tmp_path, metric_groups="operational,perplexity", **settings)
    return BatchScorer(s, perplexity=BusyPerplexity(0.005))


def test_a_scorer_fed_faster_than_its_expensive_group_samples_it_and_stores_the_fraction(tmp_path: Path) -> None:
    # 2 cores at 1,000 events/s of event time: 2 ms per event, while perplexity alone would need
    # ~5 cores. (With 0.5 core, 0.5 ms per event, the cheap group's own CPU, ~0.15-0.4 ms per
    # event depending on the machine's load, decided whether anything was left for perplexity, so
    # a loaded machine left it at its floor: that tested the cheap cost, not the sampling.)
    scorer = _scorer(tmp_path, scoring_budget=2.0)
    scorer.warm_up()
    assert scorer.budget.costs["perplexity"] == pytest.approx(0.005, rel=0.5)
    start = datetime.now(UTC) - timedelta(seconds=2)
    events = _events(2000, start, rate=1000.0)
    batches = [scorer.score(events[i : i + 200]) for i in range(0, len(events), 200)]
    last = batches[-1].metrics
    latency = [m for m in last if m.name == "latency_ms"]
    ppl = [m for m in last if m.name == "perplexity"]
    assert len(latency) == 200 and {m.sample_fraction for m in latency} == {1.0}
    fraction = scorer.fraction("perplexity")
    assert 0.01 <= fraction < 0.5
    assert 0 < len(ppl) < 200 and {m.sample_fraction for m in ppl} == {fraction}
    assert scorer.budget.rate == pytest.approx(1000.0, rel=0.05)


def test_a_full_collection_is_the_heaps_cost_not_the_group_it_interrupted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # In CI, after 1,700 tests, a full collection took ~1 s; one that struck inside the cheap
    # group's 200 events read as 5 ms per event, and perplexity was sampled to its floor.
    scorer = _scorer(tmp_path, scoring_budget=2.0)
    scorer.warm_up()
    events = _events(400, datetime.now(UTC) - timedelta(seconds=1), rate=1000.0)
    scorer.score(events[:200])
    cheap = scorer.budget.costs["operational"]
    heap = [[[] for _ in range(4)] for _ in range(100_000)]  # half a million containers to walk
    operational = next(g for g in scorer.active if g.name == "operational")
    plain, collected = operational.score, []

    def score_then_collect(batch: list[InferenceEvent], out: object) -> None:
        plain(batch, out)  # type: ignore[arg-type]
        before = collector_cpu_seconds()
        gc.collect()
        collected.append(collector_cpu_seconds() - before)

    monkeypatch.setattr(operational, "score", score_then_collect)
    scorer.score(events[200:])
    assert len(heap) and collected[0] > 50 * cheap  # the collection dwarfs the group's own work
    # Left out of the group's moving average (it would have added 0.3 * collected / 200) ...
    assert scorer.budget.costs["operational"] < cheap + 0.3 * collected[0] / 200 / 4
    # ... and spread over the events seen as the cheap cost ``gc``.
    assert scorer.budget.costs["gc"] >= collected[0] / 400


class OnlyServedVersion:
    """Like :class:`atalaia.metrics.perplexity.VersionedPerplexity`: a scorer for the served base
    version only; any other version has none."""

    def __init__(self, served: str) -> None:
        self.served, self.ppl = served, BusyPerplexity(0.005)

    def scorer(self, version: str) -> BusyPerplexity | None:
        return self.ppl if version == self.served else None


def test_warm_up_measures_perplexity_on_the_served_version(tmp_path: Path) -> None:
    # Perplexity scores only versions Atalaia hosts: a warm-up sample of another version would
    # measure its cost as nothing, and the first batch would go unsampled.
    scorer = BatchScorer(Settings(home=tmp_path, metric_groups="operational,perplexity", scoring_budget=0.5))
    scorer._versions = OnlyServedVersion(scorer.settings.model_version)
    scorer.warm_up()
    assert scorer.budget.costs["perplexity"] == pytest.approx(0.005, rel=0.5)


def test_explicit_sample_rates_win_over_the_budget(tmp_path: Path) -> None:
    scorer = _scorer(tmp_path, scoring_budget=0.5, sample_rates={"perplexity": 0.5})
    scorer.warm_up()
    start = datetime.now(UTC) - timedelta(seconds=2)
    for i in range(3):
        batch = scorer.score(_events(200, start + timedelta(seconds=i * 0.2), rate=1000.0))
    assert scorer.fraction("perplexity") == 0.5
    assert {m.sample_fraction for m in batch.metrics if m.name == "perplexity"} == {0.5}


def test_window_counts_weight_sampled_rows_and_the_mean_is_unbiased(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'w.db'}"
    upgrade(url)
    engine = get_engine(url)
    at = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)

    def row(value: float, fraction: float) -> dict[str, object]:
        return repository.metric_row(
            MetricEvent(
                source_event_id=uuid.uuid4(),
                source_ts=at + timedelta(seconds=1),
                service="s",
                model_version="v1",
                name="perplexity",
                value=value,
                sample_fraction=fraction,
            )
        )

    # 40 rows at fraction 0.1 stand for 400 events; 10 at fraction 1 for 10 more (the same mean).
    rows = [row(10.0 + (i % 2), 0.1) for i in range(40)] + [row(10.0 + (i % 2), 1.0) for i in range(10)]
    with engine.begin() as conn:
        repository.insert_ignoring_duplicates(conn, t.metrics, rows)
        materialize(conn, 60, now=at + timedelta(seconds=200), lookback_s=600)
        stored = conn.execute(select(t.metrics.c.sample_fraction)).scalars().all()
        window = conn.execute(select(t.metric_windows)).one()
    assert sorted(set(stored)) == [0.1, 1.0]
    assert window.count == 410 and window.errors == 0
    assert window.mean == pytest.approx(10.5)


def test_dashboard_scoring_panel_shows_lag_budget_and_fractions(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from monitors.web import create_app

    url = f"sqlite:///{tmp_path / 'd.db'}"
    upgrade(url)
    engine = get_engine(url)
    now = datetime.now(UTC)
    events = _events(10, now - timedelta(minutes=5), rate=1.0)
    rows = [repository.inference_row(e, ingested_at=e.ts + timedelta(seconds=2)) for e in events]
    metrics = [MetricEvent.of(e, "perplexity", 10.0, sample_fraction=0.25) for e in events[:4]]
    metrics += [MetricEvent.of(e, "latency_ms", 10.0) for e in events]
    with engine.begin() as conn:
        repository.insert_ignoring_duplicates(conn, t.inference_events, rows)
        repository.insert_ignoring_duplicates(conn, t.metrics, [repository.metric_row(m) for m in metrics])
    settings = Settings(home=tmp_path, scoring_budget=0.5)
    body = TestClient(create_app(settings, engine)).get("/api/dashboard/scoring?since=1h").json()
    assert body["budget_cores"] == 0.5
    assert body["lag_s"]["events"] == 10 and body["lag_s"]["p95"] == pytest.approx(2.0)
    ppl = next(g for g in body["groups"] if g["group"] == "perplexity")
    assert ppl == {
        "group": "perplexity",
        "rows": 4,
        "mean_fraction": 0.25,
        "min_fraction": 0.25,
        "events_estimated": 16,
    }
    assert "operational" not in {g["group"] for g in body["groups"]}


def test_the_workers_pipeline_counts_against_the_budget_and_the_floor_is_in_events() -> None:
    from atalaia.metrics.budget import PIPELINE

    def at_200_per_s(with_pipeline: bool) -> ScoringBudget:
        budget = ScoringBudget(0.8, ["perplexity"])
        budget.observe("perplexity", 0.1, 1)
        budget.observe("text", 0.0005, 1)
        if with_pipeline:
            budget.observe(PIPELINE, 0.0015, 1)  # parse, write, publish: cheap, on every event
        budget.update(2, T0 + 1, now=T0 + 1, oldest_ts=T0 + 1 - 1 / 200)
        budget.update(200, T0 + 2, now=T0 + 2)
        return budget

    # 0.8 core / 200 events/s = 4 ms per event; text 0.5 ms; the pipeline 1.5 ms more.
    assert at_200_per_s(False).fraction("perplexity") == pytest.approx(0.035, rel=0.05)
    assert at_200_per_s(True).fraction("perplexity") == pytest.approx(0.02, rel=0.05)
    # The floor is 0.2 scored events per second, not a share of the events: at 200/s, 0.1 %.
    starved = at_200_per_s(True)
    starved.observe(PIPELINE, 1.0, 1)  # the pipeline alone over budget: the floor, not zero
    starved.update(200, T0 + 3, now=T0 + 3)
    assert starved.fraction("perplexity") == starved.floor() == pytest.approx(0.001, rel=0.05)
