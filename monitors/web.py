"""The monitor's web app: the dashboard page, its JSON routes, the alert API and ``/healthz``.

The page and its script are files in ``monitors/static/`` (no CDN: the page must work on a
machine without internet); the charts are SVG drawn by ``dashboard.js`` itself.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy import Engine, text

from atalaia.settings import Settings
from atalaia.storage.db import redact_url
from monitors import dashboard, reports

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).with_name("static")


def create_app(
    settings: Settings, engine: Engine, model_events: Any | None = None, *, pipeline: Any | None = None
) -> FastAPI:
    """The monitor's FastAPI app over ``engine``.

    ``app.state`` holds ``settings``, ``engine``, ``metric_of_rule`` (rule name → metric, to put
    alert markers on the right chart) and ``model_events`` (a
    :class:`monitors.model_feed.ModelEventFeed`, or ``None`` when deploys come from
    ``model_versions`` only), ``pipeline`` (a :class:`monitors.pipeline_health.PipelineHealth`:
    consumer lag and last commit on ``/healthz`` and ``/metrics``, or ``None``). The alert API
    router of ``monitors.api`` is included when that
    module exists.

    Examples
    --------
    >>> from sqlalchemy import create_engine
    >>> app = create_app(Settings(home="/tmp/atalaia-doc"), create_engine("sqlite://"))
    >>> sorted(p for p in app.openapi()["paths"] if p.startswith("/api/dashboard"))[:2]
    ['/api/dashboard/alerts', '/api/dashboard/canaries']
    """
    from monitors.rules import load_rules

    # No /docs: Swagger UI loads from a CDN, which this page must not need. /openapi.json stays.
    app = FastAPI(title="Atalaia monitor", version="1", docs_url=None, redoc_url=None)
    app.state.settings = settings
    app.state.engine = engine
    app.state.model_events = model_events
    app.state.metric_of_rule = dashboard.metric_of_rules(lambda: load_rules(settings.rules_file))

    @app.get("/", include_in_schema=False)
    @app.get("/dashboard")
    def page() -> FileResponse:
        """The dashboard page."""
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    @app.get("/healthz")
    def healthz(request: Request) -> JSONResponse:
        """200 when the database answers, 503 otherwise; says whether model events are followed,
        and the consumer lag and last commit of the monitor's group and the worker's."""
        feed = request.app.state.model_events
        body: dict[str, Any] = {
            "status": "ok",
            "database": redact_url(settings.database_url),
            "model_events": None if feed is None else ("caught up" if feed.caught_up.is_set() else "reading"),
        }
        if pipeline is not None:
            body.update(pipeline.as_dict())
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception as exc:  # noqa: BLE001 - report it, do not crash the probe
            body.update(status="unavailable", error=f"{type(exc).__name__}: {exc}"[:300])
            return JSONResponse(body, status_code=503)
        return JSONResponse(body)

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> PlainTextResponse:
        """Prometheus: consumer lag, oldest waiting message and last commit of both groups."""
        text = pipeline.prometheus() if pipeline is not None else ""
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    app.include_router(dashboard.router)
    app.include_router(reports.router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    # The alert API (silences, acks, alert queries) is a sibling module; include it when present.
    if importlib.util.find_spec("monitors.api") is not None:
        from monitors.api import router as alerts_router

        app.include_router(alerts_router)
    return app
