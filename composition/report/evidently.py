"""Evidently reports over stored data: a reference period against the current one.

``build_evidently_report(engine, settings, since=..., version=...)`` reads the requests of two
periods from the database (``inference_events`` and their per-request ``metrics`` rows), lays
them out one row per request (a column per metric, plus the prompt and the response), and runs an
Evidently ``Report`` with

- ``DataDriftPreset`` over the metric columns and the text descriptors (is this period's
  distribution of ROUGE-L, toxicity, latency, answer length … the reference's?), and
- ``TextEvals`` over the descriptors of prompts and responses.

The descriptors are the ones that need nothing at run time (lengths, word and sentence counts,
share of non-letters, refusal phrases): Evidently's ``OOVWordsPercentage`` and ``Sentiment``
load NLTK corpora, which a machine without internet lacks, and its model descriptors pull from
a hub. The HTML Evidently writes carries its JavaScript and data inline (no CDN), so the file
opens offline; the JSON next to it holds every metric, and ``summary`` (in the ``.summary.json``)
the drift verdict per column, which the dashboard lists.

Files go to ``$ATALAIA_HOME/reports/evidently/evidently-<UTC timestamp>.{html,json,summary.json}``.
``atalaia report evidently`` runs it; the scheduler runs that command on ``ATALAIA_EVIDENTLY_CRON``
(``retrain.jobs.evidently_report``), and the dashboard lists the summaries (``monitors/reports.py``).
Evidently and pandas are imported only here and only when a report is built (both are heavy).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, select

from atalaia.content import text_of
from atalaia.events import utcnow
from atalaia.settings import Settings
from atalaia.storage import tables as t
from atalaia.storage.repository import as_utc

log = logging.getLogger(__name__)

#: Folder under ``$ATALAIA_HOME/reports`` of the Evidently reports.
EVIDENTLY_DIR = "evidently"
#: Most requests read per period (the newest); drift tests on more add time, not information.
MAX_EVENTS = 5000
#: Fewest requests a period needs for a drift test to mean something.
MIN_EVENTS = 10
#: Metrics that are not one value per request (drift tests run per window; their threshold).
NOT_PER_REQUEST = frozenset({"embedding_drift", "embedding_drift_threshold", "embedding_drift_prompt"})
#: Phrases of a refusal or an apology in an answer (Portuguese and English), for a descriptor.
REFUSAL_PHRASES = (
    "não posso",
    "não consigo",
    "não sei",
    "desculpe",
    "lamento",
    "i cannot",
    "i can't",
    "i'm sorry",
    "i am sorry",
    "i don't know",
)
#: The text columns of the report and the descriptors computed on each.
TEXT_COLUMNS = ("prompt", "response")


@dataclass(frozen=True)
class Periods:
    """The reference period ``[reference_start, reference_end)`` and the current ``[current_start, current_end]``."""

    reference_start: datetime
    reference_end: datetime
    current_start: datetime
    current_end: datetime


def periods(
    since: datetime | None = None,
    until: datetime | None = None,
    reference_since: datetime | None = None,
    default: timedelta = timedelta(hours=24),
) -> Periods:
    """The current period (``since``..``until``, default the last 24 hours) and the reference:
    from ``reference_since`` (default: as long again before ``since``) up to ``since``.

    Examples
    --------
    >>> from datetime import UTC
    >>> p = periods(datetime(2026, 1, 2, tzinfo=UTC), datetime(2026, 1, 3, tzinfo=UTC))
    >>> p.reference_start.isoformat(), p.reference_end.isoformat()
    ('2026-01-01T00:00:00+00:00', '2026-01-02T00:00:00+00:00')
    """
    end = as_utc(until) if until else utcnow()
    start = as_utc(since) if since else end - default
    if start >= end:
        raise ValueError("the current period must start before it ends (--since before now)")
    ref_start = as_utc(reference_since) if reference_since else start - (end - start)
    if ref_start >= start:
        raise ValueError("the reference period must start before the current one")
    return Periods(ref_start, start, start, end)


def prompt_text(messages: Any) -> str:
    """The last user message of a stored ``messages`` list (the prompt as the user wrote it).

    >>> prompt_text([{"role": "system", "content": "be brief"}, {"role": "user", "content": "Férias?"}])
    'Férias?'
    >>> prompt_text([])
    ''
    """
    if not isinstance(messages, list):
        return ""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return text_of(message.get("content"))
    last = messages[-1] if messages else None
    return text_of(last.get("content")) if isinstance(last, dict) else ""


def read_rows(
    conn: Connection, start: datetime, end: datetime, version: str | None = None, limit: int = MAX_EVENTS
) -> list[dict[str, Any]]:
    """One dict per request of ``[start, end)`` (newest ``limit``): prompt, response, its metrics."""
    query = (
        select(
            t.inference_events.c.event_id,
            t.inference_events.c.ts,
            t.inference_events.c.model_version,
            t.inference_events.c.messages,
            t.inference_events.c.response,
        )
        .where(t.inference_events.c.ts >= start, t.inference_events.c.ts < end)
        .order_by(t.inference_events.c.ts.desc())
        .limit(limit)
    )
    if version:
        query = query.where(t.inference_events.c.model_version == version)
    rows: dict[str, dict[str, Any]] = {}
    for event in conn.execute(query):
        rows[event.event_id] = {
            "ts": as_utc(event.ts),
            "model_version": event.model_version,
            "prompt": prompt_text(event.messages),
            "response": event.response or "",
        }
    if not rows:
        return []
    oldest = min(r["ts"] for r in rows.values())
    metrics = select(t.metrics.c.event_id, t.metrics.c.name, t.metrics.c.value).where(
        t.metrics.c.ts >= oldest, t.metrics.c.ts < end, t.metrics.c.value.is_not(None)
    )
    if version:
        metrics = metrics.where(t.metrics.c.model_version == version)
    for metric in conn.execute(metrics):
        row = rows.get(metric.event_id)
        if row is not None and metric.name not in NOT_PER_REQUEST and math.isfinite(metric.value):
            row[metric.name] = float(metric.value)
    return list(rows.values())


def metric_columns(reference: Sequence[dict[str, Any]], current: Sequence[dict[str, Any]]) -> list[str]:
    """Metric columns with a value in at least half the requests of both periods (a drift test
    on a column mostly empty on one side compares sampling, not the model).

    >>> metric_columns([{"prompt": "a", "rougeL": 0.2}, {"rougeL": 0.3, "cost": 1.0}], [{"rougeL": 0.1}])
    ['rougeL']
    """
    skip = {"ts", "model_version", *TEXT_COLUMNS}
    names = sorted({k for row in (*reference, *current) for k in row} - skip)

    def share(rows: Sequence[dict[str, Any]], name: str) -> float:
        return sum(name in r for r in rows) / len(rows) if rows else 0.0

    return [n for n in names if share(reference, n) >= 0.5 and share(current, n) >= 0.5]


def descriptors() -> list[Any]:
    """Evidently descriptors of prompts and responses that load no data and no model at run time."""
    from evidently import descriptors as d

    out: list[Any] = []
    for column in TEXT_COLUMNS:
        out += [
            d.TextLength(column, alias=f"{column}_length"),
            d.WordCount(column, alias=f"{column}_words"),
            d.SentenceCount(column, alias=f"{column}_sentences"),
            d.NonLetterCharacterPercentage(column, alias=f"{column}_non_letter_pct"),
        ]
    out.append(d.Contains("response", items=list(REFUSAL_PHRASES), mode="any", alias="response_refusal"))
    return out


def descriptor_columns() -> list[str]:
    """The numeric descriptor columns (the refusal flag is categorical)."""
    return [f"{c}_{k}" for c in TEXT_COLUMNS for k in ("length", "words", "sentences", "non_letter_pct")]


def drift_summary(report_json: dict[str, Any]) -> list[dict[str, Any]]:
    """Per column: the drift test Evidently chose, its value and threshold, and whether it drifted.

    A p-value method drifts below its threshold, a distance method above it.

    >>> drift_summary({"metrics": [{"config": {"type": "evidently:metric_v2:ValueDrift", "column": "rougeL",
    ...     "method": "K-S p_value", "threshold": 0.05}, "value": 0.001}]})
    [{'column': 'rougeL', 'method': 'K-S p_value', 'value': 0.001, 'threshold': 0.05, 'drifted': True}]
    """
    out = []
    for metric in report_json.get("metrics", []):
        config = metric.get("config", {})
        if not str(config.get("type", "")).endswith(":ValueDrift"):
            continue
        value, threshold, method = metric.get("value"), config.get("threshold"), str(config.get("method", ""))
        drifted = None
        if isinstance(value, int | float) and isinstance(threshold, int | float):
            drifted = value < threshold if "p_value" in method else value > threshold
        out.append(
            {
                "column": config.get("column"),
                "method": method,
                "value": value,
                "threshold": threshold,
                "drifted": drifted,
            }
        )
    return out


def _frame(rows: Sequence[dict[str, Any]], columns: Iterable[str]) -> Any:
    import pandas as pd

    cols = [*TEXT_COLUMNS, *columns]
    return pd.DataFrame([{c: r.get(c) for c in cols} for r in rows], columns=cols)


def run_report(reference: Sequence[dict[str, Any]], current: Sequence[dict[str, Any]]) -> tuple[Any, list[str]]:
    """The Evidently snapshot of ``current`` against ``reference`` and the metric columns it compared."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset, TextEvals

    if len(reference) < MIN_EVENTS or len(current) < MIN_EVENTS:
        raise ValueError(
            f"too few requests for a drift report: {len(reference)} in the reference period, "
            f"{len(current)} in the current one (at least {MIN_EVENTS} each)"
        )
    columns = metric_columns(reference, current)
    definition = DataDefinition(numerical_columns=columns, text_columns=list(TEXT_COLUMNS))
    ref = Dataset.from_pandas(_frame(reference, columns), data_definition=definition, descriptors=descriptors())
    cur = Dataset.from_pandas(_frame(current, columns), data_definition=definition, descriptors=descriptors())
    report = Report([DataDriftPreset(columns=[*columns, *descriptor_columns()]), TextEvals()])
    return report.run(current_data=cur, reference_data=ref), columns


def report_stem(folder: Path, now: datetime) -> Path:
    """``folder/evidently-<UTC timestamp>`` (no suffix), with a counter when the name is taken.

    >>> from datetime import UTC
    >>> report_stem(Path("/nonexistent"), datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)).name
    'evidently-20260102T030405Z'
    """
    base = f"evidently-{now:%Y%m%dT%H%M%SZ}"
    stem, n = folder / base, 1
    while stem.with_suffix(".html").exists():
        n += 1
        stem = folder / f"{base}-{n}"
    return stem


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)  # a reader (the dashboard) never sees half a file


def prune(folder: Path, keep: int) -> list[str]:
    """Delete all but the newest ``keep`` reports in ``folder`` (each its HTML, JSON and summary)."""
    stems = sorted({p.name.split(".")[0] for p in folder.glob("evidently-*.html")}, reverse=True)
    removed = []
    for stem in stems[keep:]:
        for suffix in (".html", ".json", ".summary.json"):
            (folder / f"{stem}{suffix}").unlink(missing_ok=True)
        removed.append(stem)
    return removed


def build_evidently_report(
    engine: Engine,
    settings: Settings,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    reference_since: datetime | None = None,
    version: str | None = None,
    out_dir: Path | None = None,
) -> dict[str, Any]:
    """Build, save and summarize the Evidently report; returns the summary (paths included).

    Raises ``ValueError`` when a period holds fewer than :data:`MIN_EVENTS` requests.
    """
    span = periods(since, until, reference_since)
    with engine.connect() as conn:
        reference = read_rows(conn, span.reference_start, span.reference_end, version)
        current = read_rows(conn, span.current_start, span.current_end, version)
    snapshot, columns = run_report(reference, current)
    folder = out_dir or settings.home / "reports" / EVIDENTLY_DIR
    folder.mkdir(parents=True, exist_ok=True)
    now = utcnow()
    stem = report_stem(folder, now)
    body = snapshot.json()
    drift = drift_summary(json.loads(body))
    summary = {
        "generated_at": now.isoformat(),
        "html": str(stem.with_suffix(".html")),
        "json": str(stem.with_suffix(".json")),
        "version": version,
        "reference": {
            "start": span.reference_start.isoformat(),
            "end": span.reference_end.isoformat(),
            "requests": len(reference),
        },
        "current": {
            "start": span.current_start.isoformat(),
            "end": span.current_end.isoformat(),
            "requests": len(current),
        },
        "metric_columns": columns,
        "drifted": [d["column"] for d in drift if d["drifted"]],
        "columns": drift,
    }
    snapshot.save_html(str(stem.with_suffix(".html.tmp")))
    os.replace(stem.with_suffix(".html.tmp"), stem.with_suffix(".html"))
    _write(stem.with_suffix(".json"), body)
    _write(stem.with_suffix(".summary.json"), json.dumps(summary, indent=1))
    prune(folder, settings.evidently_keep)
    log.info(
        "evidently report written",
        extra={"path": summary["html"], "drifted": summary["drifted"], "requests": len(current)},
    )
    return summary


__all__ = [
    "EVIDENTLY_DIR",
    "Periods",
    "build_evidently_report",
    "drift_summary",
    "periods",
    "prune",
    "read_rows",
]
