"""/v1/notifications: the feed of enquiries about the custodian's children.

The feed, its authority filter and the acknowledgement are app/notifications/service.py's
(the web client's page calls the same); another authority's notification is simply not
found (404), never forbidden (which would confirm it).
"""

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Request

from app.audit.deps import Reviewer
from app.deps import SessionDep
from app.errors import responses
from app.notifications.service import (
    NotificationPage,
    NotificationQuery,
    NotificationRead,
    acknowledge_notification,
    notification_page,
)

router = APIRouter(prefix="/v1/notifications", tags=["notifications"])


@router.get(
    "",
    response_model=NotificationPage,
    summary="Enquiries about your authority's children: unacknowledged first, then newest",
)
async def list_notifications(
    reviewer: Reviewer,
    session: SessionDep,
    query: Annotated[NotificationQuery, Query()],
) -> NotificationPage:
    return await notification_page(session, reviewer, query)


@router.post(
    "/{notification_id}/acknowledge",
    response_model=NotificationRead,
    responses=responses("notification_not_found"),
    summary="Mark a notification as seen (idempotent)",
)
async def acknowledge(
    notification_id: uuid.UUID, request: Request, reviewer: Reviewer, session: SessionDep
) -> NotificationRead:
    return await acknowledge_notification(session, request, reviewer, notification_id)
