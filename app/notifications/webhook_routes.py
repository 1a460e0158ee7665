"""/v1/notifications/webhook: a custodian says where its authority's notifications are
pushed, besides the feed. One webhook per authority; the signing secret is shown once.
The checks, the store and the audit are app/notifications/webhook_settings.py's."""

from fastapi import APIRouter, Request

from app.audit.deps import Reviewer
from app.deps import SessionDep, SettingsDep
from app.errors import responses
from app.notifications import webhook_settings
from app.notifications.webhook_settings import WebhookCreated, WebhookRead, WebhookSet

router = APIRouter(prefix="/v1/notifications/webhook", tags=["notifications"])


@router.put(
    "",
    response_model=WebhookCreated,
    responses=responses("invalid_webhook", "webhook_target_refused"),
    summary="Set your authority's webhook (replaces any other; a new signing secret)",
)
async def set_webhook(
    request: Request,
    reviewer: Reviewer,
    session: SessionDep,
    settings: SettingsDep,
    webhook: WebhookSet,
) -> WebhookCreated:
    return await webhook_settings.set_webhook(session, request, settings, reviewer, webhook)


@router.get(
    "",
    response_model=WebhookRead,
    responses=responses("webhook_not_found"),
    summary="Your authority's webhook (never its secret)",
)
async def read_webhook(reviewer: Reviewer, session: SessionDep) -> WebhookRead:
    return await webhook_settings.read_webhook(session, reviewer)


@router.delete(
    "",
    status_code=204,
    responses=responses("webhook_not_found"),
    summary="Stop pushing notifications (the feed keeps them)",
)
async def delete_webhook(request: Request, reviewer: Reviewer, session: SessionDep) -> None:
    await webhook_settings.delete_webhook(session, request, reviewer)
