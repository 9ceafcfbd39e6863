"""The report as one self-contained HTML file: inline CSS, inline SVG charts, no script, no links out.

:func:`build_report` reads the data (:mod:`composition.report.data`), draws the charts
(:mod:`atalaia.charts.svg`) and writes ``<out_dir>/report-<UTC timestamp>.html``.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
from collections.abc import Mapping, Sequence
from datetime import datetime
from html import escape
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import Engine

from atalaia.charts import svg
from atalaia.metrics.groups import registry
from atalaia.settings import Settings
from composition.report.data import Alert, ReportData, Run, load_report_data, lower_is_better

log = logging.getLogger(__name__)

#: Which alert rules' markers a chart shows: the metrics of its rules.
CHART_METRICS: dict[str, tuple[str, ...]] = {
    **{c.key: c.alert_metrics or (c.metric,) for c in registry.charts()},
    "requests": (),
}
#: Charts drawn by hand below; every other windowed chart of the registry is drawn generically.
OWN_CHARTS = ("requests", "latency", "drift", "rougeL", "toxicity", "cost")
#: When the rules file does not name a rule's metric: a word of the rule name → metric.
RULE_WORDS = (
    ("drift", "embedding_drift"),
    ("latency", "latency_ms"),
    ("rouge", "rougeL"),
    ("toxic", "toxicity_response"),
    ("cost", "cost"),
)

CSS = """
:root { --ink: #1f2933; --muted: #616e7c; --line: #e4e7eb; --good: #1e8449; --bad: #c0392b; }
* { box-sizing: border-box; }
body { font-family: -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; color: var(--ink);
       margin: 0; background: #f5f7fa; }
header { background: #102a43; color: #fff; padding: 18px 28px; }
header h1 { margin: 0 0 4px; font-size: 22px; }
header p { margin: 0; color: #bcccdc; font-size: 13px; }
main { max-width: 1040px; margin: 0 auto; padding: 18px 20px 40px; }
section { background: #fff; border: 1px solid var(--line); border-radius: 6px; padding: 14px 18px; margin: 0 0 16px; }
h2 { font-size: 16px; margin: 0 0 10px; }
.cards { display: flex; flex-wrap: wrap; gap: 10px; }
.card { flex: 1 1 150px; border: 1px solid var(--line); border-radius: 6px; padding: 8px 12px; background: #fbfcfd; }
.card .n { font-size: 22px; font-weight: 600; overflow-wrap: anywhere; }
.card .n.long { font-size: 14px; padding-top: 6px; }
.card .l { font-size: 12px; color: var(--muted); }
.legend { display: flex; flex-wrap: wrap; gap: 14px; font-size: 13px; margin: 6px 0 0; }
.swatch { display: inline-block; width: 14px; height: 4px; margin-right: 6px; vertical-align: middle; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { text-align: left; padding: 5px 8px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { color: var(--muted); font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.better { color: var(--good); font-weight: 600; }
.worse { color: var(--bad); font-weight: 600; }
td.state-firing, td.status-failed, td.status-rejected, td.status-rolled_back { color: var(--bad); }
td.state-resolved, td.status-deployed, td.status-active { color: var(--good); }
td.time { white-space: nowrap; }
.muted { color: var(--muted); font-size: 12px; }
svg.chart { display: block; margin: 4px 0 14px; }
svg text { font-size: 11px; fill: #52606d; }
svg text.chart-title { font-size: 13px; font-weight: 600; fill: var(--ink); }
svg text.no-data { font-size: 14px; fill: #9aa5b1; }
svg text.vlabel { font-size: 10px; }
code { font-size: 12px; }
"""


def rule_metrics(settings: Settings) -> dict[str, str]:
    """Rule name → metric, read from the rules YAML the monitor uses (its packaged default when unset).

    Read as plain YAML, so the report does not import the monitor; a file that cannot be read
    gives an empty map, and markers then follow the rule names (:data:`RULE_WORDS`).
    """
    path: Path | None = settings.rules_file
    if path is None:
        spec = importlib.util.find_spec("monitors")  # locates the package without importing it
        if spec is not None and spec.origin:
            path = Path(spec.origin).with_name("default_rules.yaml")
    if path is None or not path.is_file():
        return {}
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        log.warning("cannot read the rules file for alert markers", extra={"path": str(path), "error": str(exc)})
        return {}
    rules = doc.get("rules") if isinstance(doc, dict) else None
    return {
        str(r["name"]): str(r["metric"])
        for r in rules or []
        if isinstance(r, dict) and r.get("name") and r.get("metric")
    }


def _metric_of(rule: str, mapping: Mapping[str, str]) -> str | None:
    if rule in mapping:
        return mapping[rule]
    lowered = rule.lower()
    return next((metric for word, metric in RULE_WORDS if word in lowered), None)


def _fmt(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return svg.format_value(round(value, 12)) if abs(value) >= 1e-4 or value == 0 else f"{value:.{digits}g}"


def _when(ts: datetime | None) -> str:
    return ts.strftime("%Y-%m-%d %H:%M:%S") if ts is not None else "–"


def _duration(start: datetime | None, end: datetime | None) -> str:
    if start is None or end is None:
        return "–"
    seconds = (end - start).total_seconds()
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _bucket_label(seconds: int) -> str:
    if seconds % 3600 == 0:
        return f"{seconds // 3600} h"
    if seconds % 60 == 0:
        return f"{seconds // 60} min"
    return f"{seconds} s"


class _Drawing:
    """Chart decorations shared by every chart: colours, deploy lines, run bands, alert marks."""

    def __init__(self, data: ReportData, mapping: Mapping[str, str]) -> None:
        self.data = data
        self.colours = {v: svg.PALETTE[i % len(svg.PALETTE)] for i, v in enumerate(data.versions)}
        self.vlines = [
            svg.VLine(
                d.ts,
                f"{'rollback to' if d.kind == 'rollback' else 'deploy'} {d.version}",
                d.kind,
                d.version,
            )
            for d in data.deploys
        ]
        self.bands = [
            svg.Band(r.started_at, r.finished_at or data.end, f"retraining run {r.run_id[:8]}: {r.status}")
            for r in data.runs
            if r.status != "skipped"
        ]
        self.mapping = mapping

    def colour(self, version: str) -> str:
        return self.colours.get(version, "#7F8C8D")

    def marks(self, chart: str) -> list[svg.Mark]:
        wanted = CHART_METRICS.get(chart, ())
        out = []
        for alert in self.data.alerts:
            if _metric_of(alert.rule, self.mapping) not in wanted:
                continue
            for tr in alert.transitions:
                if tr.state in ("firing", "resolved"):
                    out.append(svg.Mark(tr.ts, alert.rule, tr.state, alert.severity, alert.summary))
        return out

    def chart(self, key: str, title: str, unit: str, lines: Sequence[svg.Line], **kw: Any) -> str:
        return svg.line_chart(
            key,
            title,
            unit,
            self.data.start,
            self.data.end,
            lines,
            vlines=self.vlines,
            bands=self.bands,
            marks=self.marks(key),
            **kw,
        )


def _charts(data: ReportData, draw: _Drawing) -> list[str]:
    width = data.bucket_s
    charts = []

    lines = []
    for s in data.series_for("latency_ms", "count"):
        # Inside a version's life an empty bucket is zero requests, not a gap.
        points = [(ts, (v or 0.0) / width) for ts, v in s.points]
        lines.append(svg.Line(s.version, draw.colour(s.version), points, version=s.version))
    charts.append(draw.chart("requests", "Request rate", "req/s", lines))

    lines = [
        svg.Line(f"{s.version} p95", draw.colour(s.version), s.points, version=s.version)
        for s in data.series_for("latency_ms", "p95")
    ]
    charts.append(draw.chart("latency", "Latency p95", "ms", lines))

    lines = []
    for version in data.versions:
        tests = [d for d in data.drift if d.version == version]
        if not tests:
            continue
        colour = draw.colour(version)
        lines.append(svg.Line(f"{version} MMD²", colour, [(d.ts, d.score) for d in tests], dots=True, version=version))
        thresholds = [(d.ts, d.threshold) for d in tests if d.threshold is not None]
        if thresholds:
            lines.append(
                svg.Line(f"{version} threshold", colour, thresholds, dashed=True, css="threshold", version=version)
            )
    charts.append(draw.chart("drift", "Embedding drift (MMD², dashed: calibrated threshold)", "MMD²", lines))

    lines = [
        svg.Line(f"{s.version} mean", draw.colour(s.version), s.points, version=s.version)
        for s in data.series_for("rougeL", "mean")
    ]
    charts.append(draw.chart("rougeL", "ROUGE-L against the reference answer (mean)", "ROUGE-L", lines))

    lines = [
        svg.Line(f"{s.version} response", draw.colour(s.version), s.points, version=s.version)
        for s in data.series_for("toxicity_response", "mean")
    ]
    lines += [
        svg.Line(f"{s.version} prompt", draw.colour(s.version), s.points, dashed=True, version=s.version)
        for s in data.series_for("toxicity_prompt", "mean")
    ]
    charts.append(draw.chart("toxicity", "Toxicity (mean; solid: responses, dashed: prompts)", "score", lines))

    lines = [
        svg.Line(f"{s.version} cost", draw.colour(s.version), s.points, version=s.version)
        for s in data.series_for("cost", "sum")
    ]
    charts.append(draw.chart("cost", f"Cost per {_bucket_label(width)}", "USD", lines))

    # Charts of the other metric groups (the plugin registry), drawn when their metric has data.
    for spec in registry.charts():
        if spec.key in OWN_CHARTS or spec.source != "windows":
            continue
        stat = next((st for st in ("mean", "p95") if st in spec.stats), "mean")
        lines = [
            svg.Line(f"{s.version} {stat}", draw.colour(s.version), s.points, version=s.version)
            for s in data.series_for(spec.metric, stat)
            if any(v is not None for _, v in s.points)
        ]
        if lines:
            charts.append(draw.chart(spec.key, f"{spec.title} ({stat})", spec.unit, lines))

    spans = [
        svg.Span(
            a.rule,
            a.severity,
            a.started,
            a.fired,
            a.resolved,
            f"{a.rule} ({a.severity}): {a.summary}" if a.summary else a.rule,
            [(x.ts, x.state) for x in a.transitions],
        )
        for a in data.alerts
    ]
    charts.append(svg.alert_timeline(data.start, data.end, spans, vlines=draw.vlines, bands=draw.bands))
    return charts


def _version_cell(version: str, draw: _Drawing) -> str:
    return f'<span class="swatch" style="background:{draw.colour(version)}"></span><code>{escape(version)}</code>'


def _summary_table(data: ReportData, draw: _Drawing) -> str:
    head = (
        "<tr><th>model version</th><th class='num'>requests</th><th class='num'>latency p95 (ms)</th>"
        "<th class='num'>ROUGE-L</th><th class='num'>toxicity (responses)</th><th class='num'>toxicity (prompts)</th>"
        "<th class='num'>cost (USD)</th><th class='num'>drift max / threshold</th></tr>"
    )
    rows = []
    for version in data.versions:
        t = data.totals.get(version, {})
        rows.append(
            f"<tr><td>{_version_cell(version, draw)}</td><td class='num'>{t.get('requests', 0) or 0:,}</td>"
            f"<td class='num'>{_fmt(t.get('latency_p95_ms'))}</td><td class='num'>{_fmt(t.get('rougeL'))}</td>"
            f"<td class='num'>{_fmt(t.get('toxicity_response'))}</td>"
            f"<td class='num'>{_fmt(t.get('toxicity_prompt'))}</td>"
            f"<td class='num'>{_fmt(t.get('cost_usd'))}</td>"
            f"<td class='num'>{_fmt(t.get('drift_max'))} / {_fmt(t.get('drift_threshold'))}</td></tr>"
        )
    if not rows:
        rows.append("<tr><td colspan='8' class='muted'>no metrics in this period</td></tr>")
    return f"<table class='versions'>{head}{''.join(rows)}</table>"


def _holdout_table(data: ReportData, draw: _Drawing) -> str:
    h = data.holdout
    if not h.versions:
        return f"<p class='muted no-holdout'>{escape(h.source)}.</p>"
    cols = "".join(f"<th class='num'>{_version_cell(v, draw)}</th>" for v in h.versions)
    delta_head = "<th class='num'>change</th>" if len(h.versions) >= 2 else ""
    rows = []
    for metric in h.metrics:
        values = [h.scores.get(v, {}).get(metric) for v in h.versions]
        cells = "".join(f"<td class='num'>{_fmt(v)}</td>" for v in values)
        delta = ""
        if len(values) >= 2:
            old, new = values[0], values[-1]
            if old is None or new is None:
                delta = "<td class='num'>–</td>"
            else:
                change = new - old
                good = change < 0 if lower_is_better(metric) else change > 0
                css = "" if change == 0 else ("better" if good else "worse")
                rel = f" ({100 * change / abs(old):+.0f}%)" if old else ""
                delta = f"<td class='num {css}'>{change:+.4g}{rel}</td>"
        rows.append(f"<tr data-metric='{escape(metric)}'><td><code>{escape(metric)}</code></td>{cells}{delta}</tr>")
    return (
        f"<table class='holdout'><tr><th>holdout metric</th>{cols}{delta_head}</tr>{''.join(rows)}</table>"
        f"<p class='muted'>Source: {escape(h.source)}. Change is the last version minus the first; green is an "
        "improvement (lower is better for toxicity, perplexity, latency and cost).</p>"
    )


def _alerts_table(alerts: Sequence[Alert]) -> str:
    if not alerts:
        return "<p class='muted'>No alert in this period.</p>"
    rows = []
    for a in alerts:
        version = a.labels.get("model_version", "")
        rows.append(
            f"<tr class='alert-row state-{escape(a.state)}' data-rule='{escape(a.rule)}'>"
            f"<td><code>{escape(a.rule)}</code></td><td>{escape(a.severity)}</td>"
            f"<td class='state-{escape(a.state)}'>{escape(a.state)}</td><td><code>{escape(str(version))}</code></td>"
            f"<td class='time'>{_when(a.started)}</td><td class='time'>{_when(a.fired)}</td>"
            f"<td class='time'>{_when(a.resolved)}</td>"
            f"<td>{_duration(a.fired, a.resolved)}</td><td>{escape(a.action or '')}</td>"
            f"<td>{escape(a.summary)}</td></tr>"
        )
    return (
        "<table class='alerts'><tr><th>rule</th><th>severity</th><th>state</th><th>model version</th>"
        "<th>pending (UTC)</th><th>firing</th><th>resolved</th><th>firing for</th><th>action</th><th>summary</th></tr>"
        f"{''.join(rows)}</table>"
    )


def _runs_table(runs: Sequence[Run]) -> str:
    if not runs:
        return "<p class='muted'>No retraining run in this period.</p>"
    rows = []
    for r in runs:
        steps = ", ".join(
            f"{escape(str(s.get('name')))} {s.get('seconds', '…')} s" + ("" if s.get("status") == "ok" else " ✗")
            for s in r.steps
        )
        decision = "promoted" if r.promote else ("rejected" if r.promote is False else "–")
        why = "; ".join(r.reasons) or next(iter((r.error or "").splitlines()), "")
        rows.append(
            f"<tr class='run status-{escape(r.status)}'><td><code>{escape(r.run_id[:8])}</code></td>"
            f"<td>{escape(r.trigger)}</td><td class='status-{escape(r.status)}'>{escape(r.status)}</td>"
            f"<td class='time'>{_when(r.started_at)}</td><td class='time'>{_duration(r.started_at, r.finished_at)}</td>"
            f"<td><code>{escape(r.candidate_version or '–')}</code></td><td>{decision}</td>"
            f"<td>{escape(why)}</td><td class='muted'>{steps}</td></tr>"
        )
    return (
        "<table class='runs'><tr><th>run</th><th>trigger</th><th>status</th><th>started (UTC)</th><th>took</th>"
        f"<th>candidate</th><th>gate</th><th>reasons</th><th>steps</th></tr>{''.join(rows)}</table>"
    )


def _canary_horizon(c: dict[str, Any]) -> str:
    """Each arm's samples per metric and where the canary ends without a verdict (sample budget
    per arm, time limit): the progress of a split that has not decided yet."""
    samples = ", ".join(
        f"{name} {n.get('candidate', 0)} / {n.get('parent', 0)}" for name, n in (c.get("samples") or {}).items()
    )
    horizon = c.get("horizon") or {}
    parts = [f"samples candidate / parent: {samples}"] if samples else []
    if horizon.get("max_samples") and horizon.get("ends_by"):
        ends = _when(datetime.fromisoformat(str(horizon["ends_by"])))
        parts.append(f"horizon (no verdict: parent kept) {horizon['max_samples']} samples per arm or {ends} UTC")
    return "; ".join(parts)


def _canaries_table(canaries: Sequence[dict[str, Any]]) -> str:
    """The split (share, mode, requests per version) and the verdict of each canary, with each
    metric's confidence interval on candidate - parent, the samples of each arm and the horizon."""
    if not canaries:
        return "<p class='muted'>No canary with a traffic split in this period.</p>"
    rows = []
    for c in canaries:
        req = c["requests"]
        split = f"{100 * float(c['share'] or 0):g}% {c['mode']}"
        counts = f"{req.get(c['candidate'], 0)} / {req.get(c['parent'], 0)}"
        if req.get("shadow"):
            counts += f" ({req['shadow']} shadow)"
        tests = "<br>".join(
            f"{escape(name)}: {_fmt(v.get('difference'))} [{_fmt(v.get('lower'))}, {_fmt(v.get('upper'))}] "
            f"margin {_fmt(v.get('margin'))} → {escape(str(v.get('outcome')))}"
            for name, v in (c.get("tests") or {}).items()
        )
        verdict = escape(c["decision"] if c["state"] != "running" else f"running ({c['decision']})")
        if progress := _canary_horizon(c):
            verdict += f"<br><span class='muted canary-horizon'>{escape(progress)}</span>"
        rows.append(
            f"<tr class='canary decision-{escape(str(c['decision']))}'>"
            f"<td><code>{escape(c['candidate'])}</code></td><td><code>{escape(c['parent'])}</code></td>"
            f"<td>{escape(split)}</td><td class='num'>{escape(counts)}</td><td>{verdict}</td>"
            f"<td class='muted'>{tests}</td><td>{escape('; '.join(c.get('reasons') or []))}</td></tr>"
        )
    return (
        "<table class='canaries'><tr><th>candidate</th><th>parent</th><th>split</th>"
        "<th class='num'>requests candidate / parent</th><th>verdict</th>"
        f"<th>candidate − parent [confidence sequence]</th><th>reasons</th></tr>{''.join(rows)}</table>"
    )


def _registry_table(data: ReportData, draw: _Drawing) -> str:
    if not data.registry:
        return "<p class='muted'>The model registry is empty: the configured base model served throughout.</p>"
    rows = []
    deploys = {d.version: d for d in data.deploys}
    for r in data.registry:
        size = r.get("size_bytes")
        event = deploys.get(r["version"])
        note = f"{event.kind} at {_when(event.ts)}" if event else ""
        reason = (r.get("metrics") or {}).get("rollback_reason")
        if reason:
            note += f" — rolled back: {reason}"
        rows.append(
            f"<tr><td>{_version_cell(str(r['version']), draw)}</td>"
            f"<td><code>{escape(str(r['parent'] or '–'))}</code></td>"
            f"<td class='status-{escape(r['status'])}'>{escape(r['status'])}</td>"
            f"<td>{escape(str(r.get('quantization') or '–'))}</td>"
            f"<td class='num'>{f'{size / 1e6:.1f} MB' if size else '–'}</td>"
            f"<td class='time'>{_when(r['activated_at'])}</td><td>{escape(note)}</td></tr>"
        )
    return (
        "<table class='registry'><tr><th>version</th><th>parent</th><th>status</th><th>quantization</th>"
        f"<th class='num'>size</th><th>last activated (UTC)</th><th>note</th></tr>{''.join(rows)}</table>"
    )


def render_html(data: ReportData, mapping: Mapping[str, str] | None = None) -> str:
    """The whole page for ``data``; ``mapping`` is rule → metric for the alert markers."""
    draw = _Drawing(data, mapping or {})
    fired = sum(1 for a in data.alerts if a.fired is not None)
    resolved = sum(1 for a in data.alerts if a.resolved is not None)
    deployed = sum(1 for d in data.deploys if d.kind == "deploy")
    rollbacks = sum(1 for d in data.deploys if d.kind == "rollback")
    active = [r["version"] for r in data.registry if r["status"] == "active"]
    cards = [
        (f"{data.requests:,}", "requests answered"),
        (f"{fired} / {resolved}", "alerts fired / resolved"),
        (f"{deployed}" + (f" (+{rollbacks} rollback)" if rollbacks else ""), "model deploys"),
        (f"{len(data.runs)}", "retraining runs"),
        (escape(str(active[-1])) if active else "base", "active model version"),
    ]
    card_html = "".join(
        f"<div class='card'><div class='n{' long' if len(n) > 16 else ''}'>{n}</div><div class='l'>{label}</div></div>"
        for n, label in cards
    )
    legend = (
        "".join(f"<span>{_version_cell(v, draw)}</span>" for v in data.versions)
        or "<span class='muted'>no model version had traffic</span>"
    )
    charts = "\n".join(_charts(data, draw))
    title = f"Atalaia report {data.start:%Y-%m-%d %H:%M} – {data.end:%H:%M} UTC"
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="atalaia report">
<title>{escape(title)}</title>
<style>{CSS}</style>
</head>
<body>
<header>
<h1>Atalaia — monitoring and retraining report</h1>
<p>{_when(data.start)} to {_when(data.end)} UTC · generated {_when(data.generated_at)} UTC ·
series from {escape(data.source)}</p>
</header>
<main>
<section id="summary"><h2>Summary</h2><div class="cards">{card_html}</div>
<div class="legend">{legend}</div></section>
<section id="versions"><h2>Per model version</h2>{_summary_table(data, draw)}</section>
<section id="charts"><h2>Over time</h2>
<p class="muted">Colours are model versions. Dashed vertical lines: deploys (dark) and rollbacks (red);
shaded: retraining runs; triangles on top: alerts firing (▼) and resolved (△).</p>
{charts}
</section>
<section id="holdout"><h2>Holdout evaluation: before and after</h2>{_holdout_table(data, draw)}</section>
<section id="alerts"><h2>Alerts</h2>{_alerts_table(data.alerts)}</section>
<section id="runs"><h2>Retraining runs</h2>{_runs_table(data.runs)}</section>
<section id="canaries"><h2>Canaries</h2>{_canaries_table(data.canaries)}</section>
<section id="registry"><h2>Model registry</h2>{_registry_table(data, draw)}</section>
</main>
</body>
</html>
"""


def report_path(out_dir: Path, now: datetime) -> Path:
    """``out_dir/report-<UTC timestamp>.html``, with a suffix when that name is taken.

    >>> from datetime import UTC
    >>> report_path(Path("/nonexistent"), datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)).name
    'report-20260102T030405Z.html'
    """
    base = f"report-{now:%Y%m%dT%H%M%SZ}"
    path = out_dir / f"{base}.html"
    n = 1
    while path.exists():
        n += 1
        path = out_dir / f"{base}-{n}.html"
    return path


def build_report(
    engine: Engine,
    settings: Settings,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    out_dir: Path | None = None,
    holdout: Mapping[str, Mapping[str, Any]] | None = None,
) -> Path:
    """Write the HTML report of ``[since, until]`` and return its path.

    Parameters
    ----------
    engine
        The Atalaia database (SQLite or PostgreSQL, migrated).
    settings
        For ``ATALAIA_HOME`` (default folder ``$ATALAIA_HOME/reports``) and the rules file, which
        says which chart an alert's markers go on.
    since, until
        The period; default the last 24 hours up to now. The charts span the data inside it.
    out_dir
        Folder of the report; created when missing.
    holdout
        Holdout scores per model version (``{version: {metric: value}}``, old first) for the
        before/after table; default the latest retraining run's gate, else the registry.
    """
    data = load_report_data(engine, since, until, holdout)
    page = render_html(data, rule_metrics(settings))
    folder = out_dir or settings.home / "reports"
    folder.mkdir(parents=True, exist_ok=True)
    path = report_path(folder, data.generated_at)
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, path)  # a reader never sees half a page
    log.info(
        "report written",
        extra={"path": str(path), "start": data.start.isoformat(), "end": data.end.isoformat(), "bytes": len(page)},
    )
    return path


__all__ = ["build_report", "render_html", "report_path", "rule_metrics"]
