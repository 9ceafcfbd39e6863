"""Metric groups as plugins: the registry drives scoring, settings, charts, report, rules and docs.

The ``length`` group (one module plus one registry line) is the proof: nothing else names it,
yet it is scored, charted on the dashboard and in the report, and listed in the docs.
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from sqlalchemy import create_engine, select

from atalaia.events import ChatMessage, InferenceEvent
from atalaia.metrics.groups import registry
from atalaia.metrics.groups.base import MetricGroup
from atalaia.metrics.groups.length import LengthGroup
from atalaia.settings import METRIC_GROUPS, SAMPLED_GROUPS, Settings
from atalaia.storage import tables as t
from atalaia.storage.db import upgrade
from atalaia.storage.repository import inference_row, insert_ignoring_duplicates, metric_row
from composition.report import build_report
from consumers import feedback_signals
from consumers.scoring import BatchScorer
from consumers.windows import materialize
from monitors import dashboard, pipeline_health
from retrain import bias

ROOT = Path(__file__).resolve().parents[2]


def _event(response: str, reference: str | None) -> InferenceEvent:
    return InferenceEvent(
        service="svc",
        model_version="m@1",
        messages=[ChatMessage(role="user", content="Quantos dias de férias?")],
        response=response,
        reference=reference,
        latency_ms=10.0,
        prompt_tokens=5,
        completion_tokens=4,
        cost=0.0,
    )


def test_every_group_declares_its_metrics_fully() -> None:
    names = [m.name for g in registry.GROUPS for m in g.metrics]
    assert len(names) == len(set(names)), "a metric name belongs to one group"
    assert len(registry.GROUPS_BY_NAME) == len(registry.GROUPS)
    for group in registry.GROUPS:
        assert issubclass(group, MetricGroup) and group.cost in ("cheap", "expensive")
        for metric in group.metrics:
            assert metric.unit and metric.description and metric.direction in ("higher", "lower", "neither")
        for chart in group.charts:
            assert chart.metric in names
    assert set(METRIC_GROUPS) == set(registry.group_names())
    assert set(SAMPLED_GROUPS) <= set(registry.sampled_group_names())
    assert "length" in Settings().enabled_groups  # on by default, from the registry


def test_length_group_scores_every_event_and_the_ratio_with_a_reference(tmp_path: Path) -> None:
    events = [_event("São 30 dias úteis por ano.", "Trinta dias úteis."), _event("ok", None), _event("a b", "...")]
    batch = BatchScorer(Settings(home=tmp_path, metric_groups="length")).score(events)
    got = {(m.source_event_id, m.name): (m.value, m.error) for m in batch.metrics}
    assert got[(events[0].event_id, "response_words")] == (6.0, None)
    assert got[(events[0].event_id, "answer_length_ratio")] == (pytest.approx(6 / 3), None)
    assert got[(events[1].event_id, "response_words")] == (1.0, None)
    assert (events[1].event_id, "answer_length_ratio") not in got
    assert got[(events[2].event_id, "answer_length_ratio")] == (None, "the reference has no words")


def test_scoring_runs_the_enabled_groups_and_those_they_require(tmp_path: Path) -> None:
    scorer = BatchScorer(Settings(home=tmp_path, metric_groups="operational,drift"))
    assert [g.name for g in scorer.active] == ["operational", "embedding", "drift"]
    assert [g.name for g in BatchScorer(Settings(home=tmp_path)).active] == list(registry.default_group_names())


def test_dashboard_charts_come_from_the_registry() -> None:
    assert dashboard.CHARTS == registry.charts()
    keys = [c.key for c in dashboard.CHARTS]
    assert keys[: len(registry.CHART_ORDER)] == list(registry.CHART_ORDER)
    assert "length" in keys


def test_report_draws_a_new_groups_chart_when_it_has_data(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    upgrade(url)
    engine = create_engine(url)
    settings = Settings(home=tmp_path, database_url=url)
    events = [_event("one two three four", "one two") for _ in range(30)]
    base = events[0].ts - timedelta(minutes=20)
    for i, ev in enumerate(events):
        ev.ts = base + timedelta(seconds=30 * i)
    scored = BatchScorer(Settings(home=tmp_path, metric_groups="operational,length")).score(events)

    with engine.begin() as conn:
        insert_ignoring_duplicates(conn, t.inference_events, [inference_row(e) for e in events])
        insert_ignoring_duplicates(conn, t.metrics, [metric_row(m) for m in scored.metrics])
        materialize(conn, 60)
        assert conn.execute(select(t.metric_windows).where(t.metric_windows.c.name == "answer_length_ratio")).first()
    page = build_report(engine, settings, since=base - timedelta(minutes=1)).read_text(encoding="utf-8")
    svg = re.search(r'<svg class="chart" id="chart-length".*?</svg>', page, re.DOTALL)
    assert svg is not None and 'class="series"' in svg.group(0)


@pytest.mark.parametrize("rules", ["default_rules.yaml", "closed_loop_rules.yaml", "demo_rules.yaml"])
def test_shipped_rules_watch_registered_metrics(rules: str) -> None:
    known = set(registry.all_metrics())
    # Feedback's corrected answers get every text-overlap score, METEOR included.
    overlap = (*registry.GROUPS_BY_NAME["text"].metrics, *registry.GROUPS_BY_NAME["meteor"].metrics)
    correction = {f"correction_{m.name}" for m in overlap}
    correction.add(feedback_signals.NAME)  # computed from feedback, not by a group
    correction.update(pipeline_health.METRICS)  # measured by the monitor on the consumer groups
    correction.update(f"bias_{score}" for score in bias.SCORES)  # the scheduled counterfactual evaluation
    data = yaml.safe_load((ROOT / "monitors" / rules).read_text(encoding="utf-8"))
    for rule in data["rules"]:
        assert rule["metric"] in known | correction, f"{rules}: {rule['name']} watches unknown {rule['metric']!r}"


def test_docs_tables_are_the_registrys() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    assert registry.docs_table() in text
    assert registry.metric_table() in text


def test_a_group_is_one_module_plus_one_registry_line() -> None:
    """Nothing outside its module and the registry names the ``length`` group or its metrics."""
    pattern = re.compile(r"answer_length_ratio|response_words|LengthGroup")
    allowed = {ROOT / "atalaia/metrics/groups/length.py", ROOT / "atalaia/metrics/groups/registry.py"}
    for path in [*ROOT.glob("atalaia/**/*.py"), *ROOT.glob("consumers/*.py"), *ROOT.glob("monitors/*.py")]:
        if path not in allowed:
            assert not pattern.search(path.read_text(encoding="utf-8")), path
    assert LengthGroup.name in registry.GROUPS_BY_NAME
