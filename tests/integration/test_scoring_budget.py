"""The scoring budget on the real stack: a worker (real Kafka, PostgreSQL, SmolLM2 perplexity)
fed faster than perplexity can keep up stores every event's cheap metrics, and perplexity on a
sample whose fraction is stored with each row and shown in the worker's /metrics."""

from __future__ import annotations

import re
import urllib.request
from datetime import timedelta

import pytest
from sqlalchemy import create_engine, func, select

from atalaia.events import utcnow
from atalaia.settings import Settings
from atalaia.storage import tables as t
from atalaia.topics import ensure_topics
from tests.integration.services import log_text, service, wait_until
from tests.integration.test_metrics_pipeline import count, event, in_distribution, produce

pytestmark = pytest.mark.integration

N = 300
#: Events per second of event time: SmolLM2 perplexity scores ~8 per second on a quiet core here.
#: 300 events then span 15 s of event time, so even at the budget's floor (0.2 scored events per
#: second) the sample is not empty by chance.
RATE = 20.0


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return resp.read().decode()


def test_a_worker_fed_faster_than_perplexity_samples_it_and_stores_the_fraction(
    isolated_settings: Settings,
    fresh_pg: str,
    models_dir,  # type: ignore[no-untyped-def]
) -> None:
    settings = isolated_settings.model_copy(
        update={"database_url": fresh_pg, "metric_groups": "operational,perplexity", "scoring_budget": 0.8}
    )
    ensure_topics(settings)
    engine = create_engine(fresh_pg)
    start = utcnow() - timedelta(seconds=N / RATE)
    # Answers of the served base version: perplexity is scored under the version that produced an
    # answer, and an unknown version gets none.
    served = settings.model_version
    events = [
        event(
            q,
            served,
            ts=start + timedelta(seconds=i / RATE),
            response=f"Answer number {i}: see the regulations portal.",
        )
        for i, q in enumerate(in_distribution(N))
    ]
    with service("worker", settings):
        produce(settings, events)
        wait_until(
            lambda: count(engine, t.inference_events) == N,
            240,
            "events stored\n" + log_text(settings, "worker")[-3000:],
        )
        wait_until(lambda: count(engine, t.metrics, t.metrics.c.name == "latency_ms") == N, 30, "latency rows")
        page = wait_until(
            lambda: (lambda p: p if "atalaia_scoring_sample_fraction" in p else None)(
                _scrape(settings.worker_web_port)
            ),
            30,
            "worker /metrics",
        )
    with engine.connect() as conn:
        cheap = conn.execute(
            select(t.metrics.c.name, func.count(), func.min(t.metrics.c.sample_fraction))
            .where(t.metrics.c.name != "perplexity")
            .group_by(t.metrics.c.name)
        ).all()
        ppl = conn.execute(
            select(t.metrics.c.sample_fraction, t.metrics.c.value, t.metrics.c.ts).where(
                t.metrics.c.name == "perplexity"
            )
        ).all()
    # Every event has its cheap metrics, taken at fraction 1.
    assert {name: (n, low) for name, n, low in cheap} == {
        name: (N, 1.0)
        for name in ("latency_ms", "prompt_tokens", "completion_tokens", "total_tokens", "cost", "cache_hit")
    }
    # Perplexity was sampled: fewer rows than events, each with the fraction it was taken at.
    assert 0 < len(ppl) < N
    fractions = {round(f, 6) for f, _, _ in ppl}
    assert all(0 < f <= 1 for f in fractions) and min(fractions) < 1, fractions
    # Until the arrival rate is measured (half a second of event time past the first batch) the
    # worker scores every event; after that it samples. So rows taken at fraction 1 come from the
    # start of the stream (each partition is in time order; the first third is a loose bound).
    first_third = start + timedelta(seconds=N / RATE / 3)
    assert all(ts <= first_third for f, _, ts in ppl if f == 1), sorted((ts, f) for f, _, ts in ppl)[:40]
    assert all(v is not None and v > 1 for _, v, _ in ppl)
    # The sample's size agrees with its fractions (Horvitz-Thompson: sum of 1/f estimates N).
    estimate = sum(1 / f for f, _, _ in ppl)
    assert 0.4 * N < estimate < 2.5 * N, (estimate, len(ppl), fractions)
    # Lag, budget and the fractions are on the worker's Prometheus page.
    assert re.search(r"^atalaia_scoring_budget_cores 0\.8$", page, re.M), page
    found = re.search(r'^atalaia_scoring_sample_fraction\{group="perplexity"\} ([0-9.e-]+)$', page, re.M)
    assert found and 0 < float(found.group(1)) < 1, page
    assert re.search(r'^atalaia_scoring_sample_fraction\{group="operational"\} 1\.0$', page, re.M), page
    assert re.search(r"^atalaia_worker_lag_seconds ", page, re.M)
    assert re.search(r'^atalaia_scoring_cost_seconds\{group="perplexity"\} ', page, re.M)
