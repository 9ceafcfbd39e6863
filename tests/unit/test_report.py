"""The HTML report on a migrated SQLite database seeded with a whole demo loop.

:func:`seed` writes 30 minutes of one closed loop: a normal phase on the old model version, a
drift phase (worse ROUGE-L, toxic prompts, a latency spike, drift tests above the threshold,
alerts firing), a retraining run that deploys a new version, and a recovered phase in which the
alerts resolve. It is shared with ``tests/integration/test_report_browser.py``.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, update
from typer.testing import CliRunner

from atalaia.events import utcnow
from atalaia.settings import Settings
from atalaia.storage import tables as t
from atalaia.storage.db import upgrade
from atalaia.storage.repository import insert_ignoring_duplicates
from composition.report import build_report, data, summarize
from composition.report.html import render_html, rule_metrics
from consumers.windows import materialize

OLD, NEW = "smollm2-135m-instruct@base", "smollm2-135m-instruct@ft-20260101T100000-abc123"
DRIFT_THRESHOLD = 0.0123
HOLDOUT_OLD = {"rouge_l": 0.21, "similarity_reference": 0.55, "toxicity": 0.031}
HOLDOUT_NEW = {"rouge_l": 0.36, "similarity_reference": 0.66, "toxicity": 0.022}
RULES = ("embedding_drift", "rouge_l_below_baseline", "latency_p95_high")


@dataclass
class Seeded:
    """What :func:`seed` wrote."""

    start: datetime
    deploy_at: datetime
    end: datetime
    events: int
    run_id: str


def _phase(minute: float) -> str:
    return "normal" if minute < 10 else ("drift" if minute < 20 else "recovered")


def seed(engine: Engine, now: datetime | None = None, with_windows: bool = True) -> Seeded:
    """Thirty minutes of the demo loop ending at ``now``: events, metrics, drift, alerts, a deploy, a run."""
    now = now or utcnow()
    start = now - timedelta(minutes=30)
    deploy_at = start + timedelta(minutes=20)
    events, metrics = [], []
    step = 10  # seconds between requests: 180 events
    for i in range(30 * 60 // step):
        ts = start + timedelta(seconds=i * step)
        minute = i * step / 60
        phase = _phase(minute)
        version = NEW if ts >= deploy_at else OLD
        event_id = str(uuid.uuid4())
        wobble = (i % 5) / 50
        values = {
            "normal": {"latency_ms": 800 + 40 * (i % 4), "rougeL": 0.45 + wobble, "tox_r": 0.02, "tox_p": 0.03},
            "drift": {"latency_ms": 2600 + 200 * (i % 3), "rougeL": 0.18 + wobble, "tox_r": 0.2, "tox_p": 0.6},
            "recovered": {"latency_ms": 900 + 40 * (i % 4), "rougeL": 0.5 + wobble, "tox_r": 0.02, "tox_p": 0.2},
        }[phase]
        events.append(
            {
                "event_id": event_id,
                "ts": ts,
                "service": "regulations-assistant",
                "model_version": version,
                "messages": [{"role": "user", "content": "How many vacation days do I get?"}],
                "response": "25 days.",
                "context": [],
                "latency_ms": values["latency_ms"],
                "prompt_tokens": 40,
                "completion_tokens": 12,
                "cost": 0.00004,
                "cache_hit": False,
                "reference": "25 working days per year.",
                "request_id": None,
                "metadata": {"phase": phase},
                "ingested_at": ts,
            }
        )
        for name, value in (
            ("latency_ms", values["latency_ms"]),
            ("cost", 0.00004),
            ("rougeL", values["rougeL"]),
            ("toxicity_response", values["tox_r"]),
            ("toxicity_prompt", values["tox_p"]),
        ):
            metrics.append(_metric(event_id, ts, version, name, value))
        if i % 3 == 0 and i >= 6:  # a drift test every 30 s once the reference is full
            score = {"normal": 0.004, "drift": 0.03, "recovered": 0.006}[phase] + wobble / 100
            labels = {"threshold": f"{DRIFT_THRESHOLD:.6g}", "test": str(i // 3)}
            metrics.append(_metric(event_id, ts, version, "embedding_drift", score, labels))
            metrics.append(_metric(event_id, ts, version, "embedding_drift_threshold", DRIFT_THRESHOLD, labels))
    run_id = str(uuid.uuid4())
    run_start = deploy_at - timedelta(minutes=4)
    with engine.begin() as conn:
        insert_ignoring_duplicates(conn, t.inference_events, events)
        insert_ignoring_duplicates(conn, t.metrics, metrics)
        for k, rule in enumerate(RULES):
            _alert(conn, rule, start + timedelta(minutes=11 + k), start + timedelta(minutes=24 + k))
        conn.execute(
            t.model_versions.insert(),
            [
                {
                    "version": OLD,
                    "parent": None,
                    "status": "retired",
                    "artefact_path": "/models/base",
                    "quantization": None,
                    "dataset_hash": None,
                    "metrics": {"holdout:24:rag": HOLDOUT_OLD},
                    "size_bytes": 270_000_000,
                    "created_at": run_start,
                    "activated_at": run_start,  # registered as active when the first run started
                },
                {
                    "version": NEW,
                    "parent": OLD,
                    "status": "active",
                    "artefact_path": "/models/new",
                    "quantization": "int8-dynamic",
                    "dataset_hash": "d" * 64,
                    "metrics": {"holdout:24:rag": HOLDOUT_NEW, "parent_holdout": HOLDOUT_OLD, "run_id": run_id},
                    "size_bytes": 140_000_000,
                    "created_at": deploy_at,
                    "activated_at": deploy_at,
                },
            ],
        )
        steps = [
            {"name": "dataset", "status": "ok", "seconds": 1.2, "details": {"examples": 40}},
            {"name": "train", "status": "ok", "seconds": 150.0, "details": {"loss_first": 2.1, "loss_last": 1.2}},
            {"name": "quantize", "status": "ok", "seconds": 20.0, "details": {}},
            {
                "name": "gate",
                "status": "ok",
                "seconds": 60.0,
                "details": {
                    "candidate": HOLDOUT_NEW,
                    "active": HOLDOUT_OLD,
                    "active_version": OLD,
                    "promote": True,
                    "reasons": [],
                },
            },
            {"name": "register", "status": "ok", "seconds": 0.1, "details": {"version": NEW}},
            {"name": "deploy", "status": "ok", "seconds": 0.2, "details": {"version": NEW, "previous": OLD}},
        ]
        conn.execute(
            t.retrain_runs.insert().values(
                run_id=run_id,
                status="deployed",
                trigger="alert:rouge_l_below_baseline",
                started_at=run_start,
                finished_at=deploy_at,
                steps=steps,
                dataset_hash="d" * 64,
                candidate_version=NEW,
                metrics={"candidate": HOLDOUT_NEW, "active": HOLDOUT_OLD},
                error=None,
            )
        )
        if with_windows:
            materialize(conn, 60, now=now + timedelta(minutes=2), lookback_s=3600)
    return Seeded(start, deploy_at, now, len(events), run_id)


def _metric(
    event_id: str, ts: datetime, version: str, name: str, value: float, labels: dict[str, str] | None = None
) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "name": name,
        "value": value,
        "error": None,
        "labels": labels,
        "service": "regulations-assistant",
        "model_version": version,
        "ts": ts,
        "created_at": ts,
    }


def _alert(conn: Any, rule: str, fired: datetime, resolved: datetime) -> None:
    alert_id = str(uuid.uuid4())
    for state, ts in (("pending", fired - timedelta(seconds=30)), ("firing", fired), ("resolved", resolved)):
        conn.execute(
            t.alerts.insert().values(
                event_id=str(uuid.uuid4()),
                alert_id=alert_id,
                fingerprint=rule[:16].ljust(16, "0"),
                rule=rule,
                state=state,
                severity="critical" if rule == "embedding_drift" else "warning",
                labels={"alertname": rule, "model_version": OLD},
                annotations={"summary": f"{rule} <b>breached</b>"},
                value=1.0,
                threshold=0.5,
                action="retrain" if rule == "rouge_l_below_baseline" else None,
                started_at=fired - timedelta(seconds=30),
                ts=ts,
            )
        )


@pytest.fixture
def db(tmp_path: Path) -> tuple[Engine, Settings]:
    url = f"sqlite:///{tmp_path / 'report.db'}"
    upgrade(url)
    return create_engine(url), Settings(home=tmp_path, database_url=url)


def chart(page: str, key: str) -> str:
    """The ``<svg>`` of one chart."""
    match = re.search(rf'<svg class="chart" id="chart-{key}".*?</svg>', page, re.DOTALL)
    assert match, f"no chart {key}"
    return match.group(0)


CHARTS = ("requests", "latency", "drift", "rougeL", "toxicity", "cost", "alerts")
EXTERNAL = re.compile(
    r"""(?:src|href|xlink:href|action|srcset|poster|data)\s*=\s*["']?\s*(?:https?:)?//|url\(\s*["']?\s*(?:https?:)?//"""
    r"|@import|<script|<link|<iframe|<object|<embed",
    re.IGNORECASE,
)


# -- the seeded loop -------------------------------------------------------------------------------
def test_report_draws_every_chart_with_both_versions(db: tuple[Engine, Settings]) -> None:
    engine, settings = db
    seeded = seed(engine)
    path = build_report(engine, settings, since=seeded.start - timedelta(minutes=5))
    assert path.parent == settings.home / "reports"
    assert re.fullmatch(r"report-\d{8}T\d{6}Z\.html", path.name)
    page = path.read_text(encoding="utf-8")

    assert page.count("<svg") == len(CHARTS)
    for key in CHARTS:
        svg = chart(page, key)
        assert "no data" not in svg and "no alerts" not in svg, key
    for key in ("requests", "latency", "rougeL", "cost"):
        svg = chart(page, key)
        assert svg.count('class="series"') == 2, key  # one line per model version
        assert f'data-version="{OLD}"' in svg and f'data-version="{NEW}"' in svg
    assert chart(page, "toxicity").count('class="series"') == 4  # responses and prompts × 2 versions
    drift = chart(page, "drift")
    assert drift.count('class="series"') == 2 and drift.count('class="threshold"') == 2
    assert drift.count('class="point"') == len(data.load_report_data(engine, seeded.start).drift) > 50
    assert page.count("<path") >= 16 + 6 + 6  # series, alert markers, timeline spans


def test_report_marks_deploys_runs_and_alerts(db: tuple[Engine, Settings]) -> None:
    engine, settings = db
    seed(engine)
    page = build_report(engine, settings).read_text(encoding="utf-8")
    # The deploy of the new version is a vertical line on every chart, the base model's
    # registration (no parent) is not.
    for key in CHARTS:
        svg = chart(page, key)
        assert svg.count(f'<g class="deploy-group" data-version="{NEW}">') == 1, key
        assert f'data-version="{OLD}"><line' not in svg
        assert svg.count('class="run-band"') == 1, key
    # Alert markers (fired ▼ and resolved △) land on the chart of the rule's metric only.
    assert chart(page, "drift").count('class="alert-marker') == 2
    assert 'data-rule="embedding_drift" data-state="firing"' in chart(page, "drift")
    assert 'data-rule="embedding_drift" data-state="resolved"' in chart(page, "drift")
    assert chart(page, "rougeL").count('data-rule="rouge_l_below_baseline"') == 2
    assert chart(page, "latency").count('data-rule="latency_p95_high"') == 2
    assert "alert-marker" not in chart(page, "cost")
    # The timeline has a lane per rule with pending and firing spans.
    timeline = chart(page, "alerts")
    for rule in RULES:
        assert f'class="alert-span state-firing" data-rule="{rule}"' in timeline
        assert f'class="alert-span state-pending" data-rule="{rule}"' in timeline
    # The alerts table and its escaped summary.
    assert page.count("<tr class='alert-row state-resolved'") == 3
    assert "&lt;b&gt;breached&lt;/b&gt;" in page and "<b>breached</b>" not in page


def test_holdout_table_from_the_gate(db: tuple[Engine, Settings]) -> None:
    engine, settings = db
    seeded = seed(engine)
    page = build_report(engine, settings).read_text(encoding="utf-8")
    table = re.search(r"<table class='holdout'>.*?</table>", page, re.DOTALL)
    assert table
    html = table.group(0)
    assert html.index(OLD) < html.index(NEW)  # old first
    assert "<td class='num better'>+0.15 (+71%)</td>" in html  # rouge_l 0.21 → 0.36
    assert "<td class='num better'>-0.009 (-29%)</td>" in html  # toxicity: lower is better
    assert f"gate of retraining run {seeded.run_id[:8]} (deployed)" in page
    assert "int8-dynamic" in page and "alert:rouge_l_below_baseline" in page


def test_holdout_argument_wins(db: tuple[Engine, Settings]) -> None:
    engine, settings = db
    seed(engine)
    holdout = {"v1": {"rougeL": 0.5, "toxicity_response": 0.1}, "v2": {"rougeL": 0.4, "toxicity_response": 0.2}}
    page = build_report(engine, settings, holdout=holdout).read_text(encoding="utf-8")
    assert "holdout evaluation passed to the report" in page
    assert "<td class='num worse'>-0.1 (-20%)</td>" in page
    assert "<td class='num worse'>+0.1 (+100%)</td>" in page


def test_holdout_from_the_registry_without_runs(db: tuple[Engine, Settings]) -> None:
    engine, _ = db
    seed(engine)
    with engine.begin() as conn:
        conn.execute(t.retrain_runs.delete())
    table = data.load_report_data(engine).holdout
    assert table.versions == [OLD, NEW]
    assert table.scores == {OLD: HOLDOUT_OLD, NEW: HOLDOUT_NEW}
    assert "model registry" in table.source


def test_series_values_per_bucket(db: tuple[Engine, Settings]) -> None:
    engine, _ = db
    seeded = seed(engine)
    report = data.load_report_data(engine, seeded.start)
    assert report.source.startswith("metric rows")
    assert report.versions == [OLD, NEW]
    assert report.requests == seeded.events
    (old_p95,) = [s for s in report.series_for("latency_ms", "p95") if s.version == OLD]
    drift_phase = [v for ts, v in old_p95.points if seeded.start + timedelta(minutes=11) < ts < seeded.deploy_at]
    assert drift_phase and min(v for v in drift_phase if v is not None) > 2500
    (new_rouge,) = [s for s in report.series_for("rougeL", "mean") if s.version == NEW]
    assert all(0.5 <= v <= 0.6 for _, v in new_rouge.points if v is not None)
    # Request counts add up to the events.
    total = sum(v or 0 for s in report.series_for("latency_ms", "count") for _, v in s.points)
    assert total == seeded.events


def test_windows_are_used_for_long_ranges(db: tuple[Engine, Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    engine, settings = db
    seeded = seed(engine)
    monkeypatch.setattr(data, "MAX_RAW_ROWS", 10)
    report = data.load_report_data(engine, seeded.start)
    assert report.source.startswith("1-minute windows")
    assert report.bucket_s >= 60
    total = sum(v or 0 for s in report.series_for("latency_ms", "count") for _, v in s.points)
    assert total == seeded.events
    (new_rouge,) = [s for s in report.series_for("rougeL", "mean") if s.version == NEW]
    assert all(0.45 <= v <= 0.65 for _, v in new_rouge.points if v is not None)
    page = render_html(report, rule_metrics(settings))
    assert page.count("<svg") == len(CHARTS) and "no data" not in page
    assert summarize(engine, seeded.start)["versions"][NEW]["requests"] == report.totals[NEW]["requests"]


def test_rollback_is_drawn_as_a_rollback(db: tuple[Engine, Settings]) -> None:
    engine, settings = db
    seeded = seed(engine)
    bad = "smollm2-135m-instruct@ft-bad"
    deployed, restored = seeded.end - timedelta(minutes=5), seeded.end - timedelta(minutes=3)
    with engine.begin() as conn:
        conn.execute(
            t.model_versions.insert().values(
                version=bad,
                parent=NEW,
                status="rolled_back",
                artefact_path=None,
                quantization=None,
                dataset_hash=None,
                metrics={"rollback_reason": "canary: latency p95 2.1x the parent's"},
                size_bytes=None,
                created_at=deployed,
                activated_at=deployed,
            )
        )
        conn.execute(update(t.model_versions).where(t.model_versions.c.version == NEW).values(activated_at=restored))
    report = data.load_report_data(engine, seeded.start)
    kinds = [(d.version, d.kind) for d in report.deploys]
    assert kinds == [(bad, "deploy"), (NEW, "rollback")]
    page = render_html(report, rule_metrics(settings))
    assert page.count('<line class="rollback"') == len(CHARTS)
    assert "canary: latency p95 2.1x" in page


def test_summary_numbers(db: tuple[Engine, Settings]) -> None:
    engine, _ = db
    seeded = seed(engine)
    summary = summarize(engine, seeded.start - timedelta(minutes=1))
    json.dumps(summary)  # plain values only
    assert summary["requests"] == seeded.events
    assert summary["active_version"] == NEW
    assert list(summary["versions"]) == [OLD, NEW]
    old, new = summary["versions"][OLD], summary["versions"][NEW]
    assert old["requests"] + new["requests"] == seeded.events
    assert new["rougeL"] > old["rougeL"]
    assert old["latency_p95_ms"] > 2500 > new["latency_p95_ms"]
    assert old["drift_max"] > DRIFT_THRESHOLD > new["drift_max"]
    assert old["drift_threshold"] == pytest.approx(DRIFT_THRESHOLD)
    assert new["cost_usd"] == pytest.approx(0.00004 * new["requests"])
    assert summary["alerts"] == {"fired": 3, "resolved": 3, "open": 0, "rules": dict.fromkeys(RULES, "resolved")}
    assert [(d["version"], d["kind"]) for d in summary["deploys"]] == [(NEW, "deploy")]
    assert [(r["status"], r["candidate_version"]) for r in summary["runs"]] == [("deployed", NEW)]
    assert summary["holdout"]["versions"] == [OLD, NEW]


def test_since_limits_the_range(db: tuple[Engine, Settings]) -> None:
    engine, _ = db
    seeded = seed(engine)
    summary = summarize(engine, seeded.deploy_at + timedelta(seconds=1))
    assert list(summary["versions"]) == [NEW]
    assert summary["deploys"] == []
    assert summary["alerts"]["resolved"] == 3  # resolved inside the range, fired before it


# -- empty and hostile data ----------------------------------------------------------------------
def test_empty_database_gives_a_page_with_no_data(db: tuple[Engine, Settings]) -> None:
    engine, settings = db
    path = build_report(engine, settings, since=utcnow() - timedelta(hours=1))
    page = path.read_text(encoding="utf-8")
    assert page.count("<svg") == len(CHARTS)
    assert page.count('class="no-data"') == len(CHARTS)
    assert "no holdout evaluation recorded" in page
    assert "No alert in this period" in page and "No retraining run in this period" in page
    summary = summarize(engine, None)
    assert summary["requests"] == 0 and summary["versions"] == {} and summary["active_version"] is None


def test_metric_errors_and_single_points(db: tuple[Engine, Settings]) -> None:
    engine, settings = db
    now = utcnow()
    with engine.begin() as conn:
        insert_ignoring_duplicates(
            conn,
            t.metrics,
            [
                {**_metric(str(uuid.uuid4()), now, OLD, "rougeL", 0.0), "value": None, "error": "empty response"},
                _metric(str(uuid.uuid4()), now, OLD, "latency_ms", 500.0),
            ],
        )
    page = build_report(engine, settings, since=now - timedelta(minutes=5)).read_text(encoding="utf-8")
    assert "no data" in chart(page, "rougeL")  # only an error row
    assert 'class="series"' in chart(page, "latency")


def test_text_is_escaped(db: tuple[Engine, Settings]) -> None:
    engine, settings = db
    now = utcnow()
    evil = '<script>alert("x")</script>'
    with engine.begin() as conn:
        insert_ignoring_duplicates(conn, t.metrics, [_metric(str(uuid.uuid4()), now, evil, "latency_ms", 500.0)])
        _alert(conn, evil, now, now + timedelta(seconds=1))
    page = build_report(engine, settings, since=now - timedelta(minutes=5)).read_text(encoding="utf-8")
    assert "<script" not in page
    assert "&lt;script&gt;" in page


def test_no_external_resources(db: tuple[Engine, Settings]) -> None:
    engine, settings = db
    seed(engine)
    page = build_report(engine, settings).read_text(encoding="utf-8")
    assert not EXTERNAL.search(page), EXTERNAL.search(page)
    assert "http://" not in page and "https://" not in page
    assert "<style>" in page and page.count("<style") == 1


def test_reports_do_not_overwrite_each_other(db: tuple[Engine, Settings], tmp_path: Path) -> None:
    engine, settings = db
    out = tmp_path / "elsewhere"
    paths = {build_report(engine, settings, out_dir=out) for _ in range(3)}
    assert len(paths) == 3 and all(p.parent == out and p.exists() for p in paths)
    assert not list(out.glob("*.tmp"))


def test_rule_metrics_from_the_rules_file(tmp_path: Path) -> None:
    default = rule_metrics(Settings(home=tmp_path))
    assert default["rouge_l_below_baseline"] == "rougeL" and default["embedding_drift"] == "embedding_drift_flag"
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - name: slow\n    metric: latency_ms\n", encoding="utf-8")
    assert rule_metrics(Settings(home=tmp_path, rules_file=rules)) == {"slow": "latency_ms"}
    rules.write_text("rules: [", encoding="utf-8")
    assert rule_metrics(Settings(home=tmp_path, rules_file=rules)) == {}


# -- the command ---------------------------------------------------------------------------------
def test_cli_report(db: tuple[Engine, Settings], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from composition.cli.main import app

    engine, settings = db
    seed(engine)
    monkeypatch.setenv("ATALAIA_HOME", str(settings.home))
    monkeypatch.setenv("ATALAIA_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("COLUMNS", "200")
    runner = CliRunner()
    result = runner.invoke(app, ["report", "--minutes", "60", "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    assert "report: " in result.stdout and OLD in result.stdout and "resolved" in result.stdout
    assert len(list((tmp_path / "r").glob("report-*.html"))) == 1

    result = runner.invoke(app, ["report", "--json", "--since", (utcnow() - timedelta(hours=1)).isoformat()])
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert Path(body["report"]).parent == settings.home / "reports" and body["active_version"] == NEW

    assert runner.invoke(app, ["report", "--since", "yesterday"]).exit_code == 2
    assert runner.invoke(app, ["report", "--since", "2026-01-01", "--minutes", "5"]).exit_code == 2


def test_cli_report_without_tables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from composition.cli.main import app

    monkeypatch.setenv("ATALAIA_HOME", str(tmp_path))
    monkeypatch.setenv("ATALAIA_DATABASE_URL", f"sqlite:///{tmp_path / 'empty.db'}")
    result = CliRunner().invoke(app, ["report"])
    assert result.exit_code == 1
    assert "atalaia db upgrade" in result.output
