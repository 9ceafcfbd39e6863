"""The HTML report of a period: metrics over time, alerts, deploys, retraining and holdout scores.

Usage: ``build_report(engine, settings, since=started)`` writes one self-contained file (inline
CSS and SVG, no script, nothing fetched) to ``$ATALAIA_HOME/reports/report-<UTC timestamp>.html``
and returns its path; ``summarize(engine, since)`` returns the key numbers as a dict for a
terminal summary. ``atalaia report`` runs both.
"""

from __future__ import annotations

from composition.report.data import ReportData, load_report_data, summarize, summary_of
from composition.report.html import build_report, render_html

__all__ = ["ReportData", "build_report", "load_report_data", "render_html", "summarize", "summary_of"]
