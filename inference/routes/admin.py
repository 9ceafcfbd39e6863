"""Admin routes: deploy, roll back and clear the cache; each needs ``Authorization: Bearer $ATALAIA_ADMIN_TOKEN``.

A deploy or rollback here is published (signed) on the models topic, so the other instances follow.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from atalaia.admin_auth import is_admin
from atalaia.events import ModelEvent
from atalaia.model_signing import sign
from inference.errors import APIError
from inference.models import SwapError
from inference.schemas import DeployRequest, RollbackRequest
from inference.service import Service, get_service


def require_admin(request: Request) -> None:
    """401 (OpenAI's ``authentication_error``) unless the request carries the admin token."""
    token = get_service(request).settings.admin_token
    if not is_admin(request.headers.get("authorization", ""), token):
        hint = "" if token else " (admin routes are disabled until ATALAIA_ADMIN_TOKEN is set)"
        raise APIError(
            401,
            f"admin routes need Authorization: Bearer <ATALAIA_ADMIN_TOKEN>{hint}",
            code="unauthorized",
            kind="authentication_error",
        )


# The check runs in each route, after the body is validated, as it always has (a bad body is a 400).
router = APIRouter(prefix="/admin")
ServiceDep = Annotated[Service, Depends(get_service)]


@router.post("/deploy")
async def admin_deploy(body: DeployRequest, request: Request, service: ServiceDep) -> dict[str, Any]:
    """Load ``artefact_path`` and serve it as ``model_version``."""
    require_admin(request)
    models, producer = service.models, service.producer
    try:
        served = await run_in_threadpool(models.deploy, body.model_version, body.artefact_path)
    except SwapError as exc:
        raise APIError(400, str(exc), "artefact_path", "deploy_failed") from None
    if producer is not None:  # the other instances follow through the models topic
        producer.emit(
            sign(
                ModelEvent(
                    type="deploy",
                    model_version=served.version,
                    artefact_path=served.path,
                    previous_version=models.previous.version if models.previous else None,
                    reason=body.reason or "admin deploy",
                ),
                service.settings,
            )
        )
    return {"model_version": served.version, "previous": models.previous.version if models.previous else None}


@router.post("/rollback")
async def admin_rollback(body: RollbackRequest, request: Request, service: ServiceDep) -> dict[str, Any]:
    """Serve the previous (or the named) version again."""
    require_admin(request)
    try:
        served = await run_in_threadpool(service.models.rollback, body.model_version)
    except SwapError as exc:
        raise APIError(409, str(exc), "model_version", "rollback_failed") from None
    if service.producer is not None:
        service.producer.emit(
            sign(
                ModelEvent(type="rollback", model_version=served.version, reason=body.reason or "admin rollback"),
                service.settings,
            )
        )
    return {"model_version": served.version}


@router.post("/cache/clear")
async def admin_cache_clear(request: Request, service: ServiceDep) -> dict[str, Any]:
    """Empty the response cache; says how many entries went."""
    require_admin(request)
    return {"cleared": service.cache.clear() if service.cache is not None else 0}
