"""The monitor's alert API: alerts, acknowledgements, silences and deliveries over HTTP.

``router`` is a FastAPI ``APIRouter`` without global state: it reads the database engine and the
settings from ``request.app.state.engine`` and ``request.app.state.settings``, which
:func:`monitors.web.create_app` sets. Reads are open; the routes that change something need
``Authorization: Bearer <ATALAIA_ADMIN_TOKEN>`` (compared in constant time, as the inference
service's admin routes; an empty token disables them: 401).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Engine, select

from atalaia.admin_auth import is_admin
from atalaia.settings import Settings
from atalaia.storage import tables as t
from atalaia.storage.repository import as_utc
from monitors import alerts as alert_store
from monitors import silences as silence_store

router = APIRouter(prefix="/api", tags=["alerts"])


def get_engine(request: Request) -> Engine:
    """The database engine of the app (``app.state.engine``)."""
    return request.app.state.engine  # type: ignore[no-any-return]


def get_settings(request: Request) -> Settings:
    """The settings of the app (``app.state.settings``)."""
    return request.app.state.settings  # type: ignore[no-any-return]


def require_admin(request: Request, settings: Annotated[Settings, Depends(get_settings)]) -> None:
    """401 unless the request carries ``Authorization: Bearer <ATALAIA_ADMIN_TOKEN>``."""
    token = settings.admin_token
    if not is_admin(request.headers.get("authorization", ""), token):
        hint = "" if token else " (disabled until ATALAIA_ADMIN_TOKEN is set)"
        raise HTTPException(
            401,
            f"this route needs Authorization: Bearer <ATALAIA_ADMIN_TOKEN>{hint}",
            headers={"WWW-Authenticate": "Bearer"},
        )


EngineDep = Annotated[Engine, Depends(get_engine)]
Admin = Depends(require_admin)


class AckRequest(BaseModel):
    """Body of ``POST /api/alerts/{alert_id}/ack``."""

    model_config = ConfigDict(extra="forbid")

    by: str = Field(min_length=1, max_length=200)
    comment: str = Field("", max_length=10_000)


class SilenceRequest(BaseModel):
    """Body of ``POST /api/silences``: matchers, and a duration or an end time."""

    model_config = ConfigDict(extra="forbid")

    matchers: dict[str, str] = Field(min_length=1)
    created_by: str = Field(min_length=1, max_length=200)
    comment: str = Field("", max_length=10_000)
    duration_s: float | None = Field(None, gt=0)
    starts_at: datetime | None = None
    ends_at: datetime | None = None


@router.get("/alerts")
def list_alerts(
    engine: EngineDep,
    state: str | None = None,
    rule: str | None = None,
    severity: str | None = None,
    model_version: str | None = None,
    since: Annotated[str | None, Query(description="ISO 8601 time, or a duration back from now: 30m, 2h")] = None,
    current: bool = False,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    """Alert transitions, newest first, with their acknowledgements (``current``: latest per alert)."""
    from atalaia.deadletter import parse_since

    try:
        where = alert_store.AlertFilter(
            state=state,
            rule=rule,
            severity=severity,
            model_version=model_version,
            since=parse_since(since) if since else None,
            current=current,
            limit=limit,
        )
        rows = alert_store.list_alerts(engine, where)
    except ValueError as exc:
        raise HTTPException(400, str(exc).replace("--since", "since")) from None
    return {"alerts": rows}


@router.get("/alerts/{alert_id}")
def get_alert(alert_id: str, engine: EngineDep) -> dict[str, Any]:
    """One alert with all its transitions and its acknowledgement."""
    try:
        return alert_store.get_alert(engine, alert_id)
    except alert_store.AlertNotFound as exc:
        raise HTTPException(404, str(exc)) from None


@router.post("/alerts/{alert_id}/ack", dependencies=[Admin])
def ack_alert(alert_id: str, body: AckRequest, engine: EngineDep) -> dict[str, Any]:
    """Acknowledge an alert (the first acknowledgement is kept); it is no longer re-notified."""
    try:
        ack = alert_store.ack_alert(engine, alert_id, body.by, body.comment)
    except alert_store.AlertNotFound as exc:
        raise HTTPException(404, str(exc)) from None
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from None
    return {"alert_id": alert_id, "ack": ack}


@router.get("/silences")
def list_silences(engine: EngineDep, show_all: Annotated[bool, Query(alias="all")] = False) -> dict[str, Any]:
    """Pending and active silences, newest first (``all=true``: expired ones too)."""
    return {"silences": [s.to_dict() for s in silence_store.list_silences(engine, include_expired=show_all)]}


@router.post("/silences", status_code=201, dependencies=[Admin])
def create_silence(body: SilenceRequest, engine: EngineDep) -> dict[str, Any]:
    """Create a silence; it mutes notifications of matching alerts (evaluation goes on)."""
    try:
        created = silence_store.create_silence(
            engine,
            body.matchers,
            created_by=body.created_by,
            comment=body.comment,
            duration_s=body.duration_s,
            ends_at=body.ends_at,
            starts_at=body.starts_at,
        )
    except silence_store.SilenceError as exc:
        raise HTTPException(400, str(exc)) from None
    return created.to_dict()


@router.delete("/silences/{silence_id}", dependencies=[Admin])
def expire_silence(silence_id: str, engine: EngineDep) -> dict[str, Any]:
    """Expire a silence now (expiring an expired one changes nothing)."""
    try:
        return silence_store.expire_silence(engine, silence_id).to_dict()
    except silence_store.SilenceError as exc:
        raise HTTPException(404, str(exc)) from None


@router.get("/deliveries")
def list_deliveries(
    engine: EngineDep,
    status: Annotated[str | None, Query(pattern="^(pending|delivered)$")] = None,
    receiver: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    """Alert deliveries, newest first: receiver, status, attempts, next attempt, last error."""
    d, a = t.alert_deliveries, t.alerts
    query = (
        select(d, a.c.alert_id, a.c.rule, a.c.state)
        .join(a, a.c.event_id == d.c.alert_event_id)
        .order_by(d.c.id.desc())
        .limit(limit)
    )
    if status:
        query = query.where(d.c.status == status)
    if receiver:
        query = query.where(d.c.receiver == receiver)
    with engine.connect() as conn:
        rows = [dict(r) for r in conn.execute(query).mappings()]
    for r in rows:
        for key in ("next_attempt_at", "created_at", "delivered_at"):
            if r[key] is not None:
                r[key] = as_utc(r[key])
    return {"deliveries": rows}
