"""The HTML report in a real browser (Debian's headless Chromium) and on the real PostgreSQL.

The report is built from the seeded demo loop of ``tests/unit/test_report.py``. Chromium must
load the file from disk, lay out every chart with a real size, request nothing but the file
itself, and log no error; a screenshot is kept next to the report for a look by eye
(``pytest --basetemp=DIR`` keeps it).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine

from atalaia.settings import Settings
from atalaia.storage.db import upgrade
from composition.report import build_report, summarize
from tests.unit.test_report import CHARTS, NEW, OLD, RULES, seed

pytestmark = pytest.mark.integration

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def report(tmp_path: Path) -> Path:
    url = f"sqlite:///{tmp_path / 'report.db'}"
    upgrade(url)
    engine = create_engine(url)
    seed(engine)
    try:
        return build_report(engine, Settings(home=tmp_path, database_url=url))
    finally:
        engine.dispose()


def _chromium(chromium: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [chromium, *CHROMIUM_ARGS, f"--user-data-dir={tmp_path / 'chromium-profile'}", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_report_renders_in_headless_chromium(report: Path, chromium: str, tmp_path: Path) -> None:
    # The DOM Chromium built from the file: every chart and table made it through the parser.
    dom = _chromium(chromium, tmp_path, "--dump-dom", report.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert dom.stdout.count("<svg") == len(CHARTS)
    for key in CHARTS:
        assert f'id="chart-{key}"' in dom.stdout, key
    assert dom.stdout.count('class="deploy"') == len(CHARTS)
    assert '<table class="holdout">' in dom.stdout or "<table class='holdout'>" in dom.stdout
    assert not re.search(r"Uncaught|SyntaxError", dom.stderr)

    # A screenshot at the size the brief's check uses; a real PNG with content.
    png = report.with_suffix(".png")
    shot = _chromium(chromium, tmp_path, f"--screenshot={png}", "--window-size=1400,2400", report.as_uri())
    assert shot.returncode == 0, shot.stderr[-2000:]
    head = png.read_bytes()[:8]
    assert head == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 50_000  # a blank page is a few kB


def test_report_layout_and_requests_in_chromium(report: Path, chromium: str) -> None:
    """Driven by Playwright when installed: sizes of the charts, requests made, console errors."""
    sync_api = pytest.importorskip("playwright.sync_api")
    requests: list[str] = []
    errors: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 2400})
            page.on("request", lambda req: requests.append(req.url))
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(report.as_uri(), wait_until="load")
            boxes: list[dict[str, Any]] = page.eval_on_selector_all(
                "svg.chart",
                "els => els.map(e => ({id: e.id, w: e.getBoundingClientRect().width,"
                " h: e.getBoundingClientRect().height}))",
            )
            assert [b["id"] for b in boxes] == [f"chart-{k}" for k in CHARTS]
            for box in boxes:
                assert box["w"] > 600 and box["h"] > 60, box
            # Lines are drawn with a length (not collapsed to a point).
            lengths = page.eval_on_selector_all("#chart-rougeL path.series", "els => els.map(e => e.getTotalLength())")
            assert len(lengths) == 2 and min(lengths) > 100
            assert page.locator(f'#chart-drift g.deploy-group[data-version="{NEW}"]').count() == 1
            for rule in RULES:
                assert page.locator(f'#chart-alerts path.alert-span[data-rule="{rule}"]').count() == 2
            assert page.locator("table.holdout td.better").count() == 3
            assert OLD in page.inner_text("table.holdout")
        finally:
            browser.close()
    assert requests == [report.as_uri()], requests  # nothing else is fetched
    assert errors == []


def test_report_on_postgres(fresh_pg: str, tmp_path: Path) -> None:
    engine = create_engine(fresh_pg)
    try:
        seeded = seed(engine)
        path = build_report(engine, Settings(home=tmp_path, database_url=fresh_pg), since=seeded.start)
        summary = summarize(engine, seeded.start)
    finally:
        engine.dispose()
    page = path.read_text(encoding="utf-8")
    assert page.count("<svg") == len(CHARTS) and "no data" not in page
    assert summary["requests"] == seeded.events
    assert list(summary["versions"]) == [OLD, NEW] and summary["active_version"] == NEW
    assert summary["alerts"]["fired"] == summary["alerts"]["resolved"] == len(RULES)
    assert summary["holdout"]["versions"] == [OLD, NEW]
