"""The Evidently report in a real browser (Debian's headless Chromium via Playwright), built from
data seeded into the real PostgreSQL: it must load from disk with no network, request nothing but
the file itself, log no error, and draw its charts (Plotly SVGs with a real size)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import create_engine

from atalaia.settings import Settings
from composition.report.evidently import build_evidently_report
from tests.integration.test_report_browser import CHROMIUM_ARGS
from tests.unit.test_evidently_report import seed_periods

pytestmark = pytest.mark.integration


def test_evidently_report_renders_offline_in_chromium(fresh_pg: str, chromium: str, tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    engine = create_engine(fresh_pg)
    try:
        split = seed_periods(engine)
        summary = build_evidently_report(engine, Settings(home=tmp_path, database_url=fresh_pg), since=split)
    finally:
        engine.dispose()
    report = Path(summary["html"])
    assert "latency_ms" in summary["drifted"]
    requests: list[str] = []
    errors: list[str] = []
    with sync_api.sync_playwright() as pw:
        # --proxy-server to nowhere: any request that left the file would fail and be seen below.
        browser = pw.chromium.launch(
            executable_path=chromium, headless=True, args=[*CHROMIUM_ARGS, "--proxy-server=127.0.0.1:9"]
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 2400})
            page.on("request", lambda req: requests.append(req.url))
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(report.as_uri(), wait_until="load")
            page.wait_for_selector(".js-plotly-plot svg.main-svg", timeout=60_000)
            boxes = page.eval_on_selector_all(
                ".js-plotly-plot",
                "els => els.map(e => ({w: e.getBoundingClientRect().width, h: e.getBoundingClientRect().height,"
                " marks: e.querySelectorAll('path, rect.point, .point, .bars path').length}))",
            )
            text = page.inner_text("body")
            page.screenshot(path=str(report.with_suffix(".png")), full_page=False)
        finally:
            browser.close()
    assert boxes, "no Plotly chart drawn"
    drawn = [b for b in boxes if b["w"] > 200 and b["h"] > 100 and b["marks"] > 0]
    assert len(drawn) >= 3, boxes
    # The drift table names the compared columns (its first page: the most drifted).
    assert "Dataset Drift" in text and "latency_ms" in text and "response_length" in text, text[:2000]
    assert requests == [report.as_uri()], requests
    assert errors == [], errors
