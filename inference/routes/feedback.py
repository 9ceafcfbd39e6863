"""``POST /v1/feedback``: a rating, comment or corrected answer about a completion, as a ``FeedbackEvent``."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends

from inference.errors import APIError
from inference.schemas import FeedbackRequest
from inference.service import Service, get_service

router = APIRouter()


@router.post("/v1/feedback", status_code=202)
async def feedback(req: FeedbackRequest, service: Annotated[Service, Depends(get_service)]) -> dict[str, Any]:
    """Accept feedback on a completion (``chatcmpl-<event id>``) and emit it; 202 once handed over."""
    raw_id = req.completion_id.removeprefix("chatcmpl-")
    try:
        inference_id = uuid.UUID(raw_id)
    except ValueError:
        raise APIError(
            400, "completion_id must be the id of a chat completion (chatcmpl-<uuid>)", "completion_id"
        ) from None
    service.check_metadata(req.metadata)
    if req.rating is None and not req.corrected_answer and not req.comment:
        raise APIError(400, "give at least one of rating, corrected_answer or comment")
    event = service.events.feedback(req, inference_id)
    if service.producer is not None:
        service.producer.emit(event)
    return {"id": str(event.event_id), "object": "feedback", "status": "accepted"}
