"""A custodian's webhook: where its authority's notifications are pushed, besides the
feed. One webhook per authority; the signing secret is shown once, when it is set.
For the API (app/notifications/webhook_routes.py) and the web client's page
(app/web/review_routes.py) alike, so both check, store and record it the same way."""

import secrets
from datetime import datetime
from typing import Annotated

from fastapi import Request
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, HttpUrl
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit.service import authority_event, commit_or_fail_closed, refuse
from app.auth.principals import Principal
from app.config import Environment, Settings
from app.db import utcnow
from app.errors import ProblemError
from app.notifications.models import NotificationWebhook
from app.notifications.targets import RefusedTarget, vet


def _no_credentials(url: HttpUrl) -> HttpUrl:
    if url.username or url.password:
        raise ValueError("put no credentials in the URL: verify the X-CPR-Signature header")
    if url.fragment:
        raise ValueError("a webhook URL has no fragment")
    return url


class WebhookSet(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: Annotated[HttpUrl, Field(max_length=2000), AfterValidator(_no_credentials)]


class WebhookRead(BaseModel):
    url: str
    active: bool
    created_at: datetime


class WebhookCreated(WebhookRead):
    signing_secret: str = Field(
        description="Shown once: HMAC-SHA256 key for the X-CPR-Signature header of each delivery."
    )


async def set_webhook(
    session: AsyncSession,
    request: Request,
    settings: Settings,
    reviewer: Principal,
    webhook: WebhookSet,
) -> WebhookCreated:
    """Set the authority's webhook (replacing any other) with a new signing secret:
    ``notification.webhook_set``; a target inside the network is refused (422) and on
    record (``notification.webhook_refused``)."""
    url = str(webhook.url)
    if settings.environment is Environment.production and webhook.url.scheme != "https":
        raise ProblemError(
            422,
            "Invalid webhook",
            "Notifications are only sent over https.",
            code="invalid_webhook",
        )
    try:
        await vet(url, settings.webhook_allowed_hosts)
    except RefusedTarget as exc:
        # On record: pointing the notifier inside the network is worth a custodian's look.
        refused = authority_event(
            request,
            reviewer,
            "notification.webhook_refused",
            refusal="webhook_target_refused",
            detail={"url": url},
        )
        await refuse(
            session,
            refused,
            ProblemError(
                422,
                "Invalid webhook",
                code="webhook_target_refused",
                errors=[{"loc": ["body", "url"], "msg": str(exc), "type": "value_error"}],
            ),
        )
    row = await session.get(NotificationWebhook, reviewer.organisation_id)
    if row is None:
        row = NotificationWebhook(organisation_id=reviewer.organisation_id)
        session.add(row)
    row.url, row.active, row.created_at = url, True, utcnow()
    row.signing_secret = secrets.token_urlsafe(32)
    session.add(authority_event(request, reviewer, "notification.webhook_set", detail={"url": url}))
    await commit_or_fail_closed(session)
    return WebhookCreated(
        url=url, active=True, created_at=row.created_at, signing_secret=row.signing_secret
    )


async def _own(session: AsyncSession, reviewer: Principal) -> NotificationWebhook:
    row = await session.get(NotificationWebhook, reviewer.organisation_id)
    if row is None or not row.active:
        raise ProblemError(
            404, "Not found", "Your authority has no webhook.", code="webhook_not_found"
        )
    return row


async def read_webhook(session: AsyncSession, reviewer: Principal) -> WebhookRead:
    """The authority's webhook, never its secret (404 ``webhook_not_found`` without one)."""
    row = await _own(session, reviewer)
    return WebhookRead(url=row.url, active=row.active, created_at=row.created_at)


async def delete_webhook(session: AsyncSession, request: Request, reviewer: Principal) -> None:
    """Stop pushing notifications (the feed keeps them): ``notification.webhook_removed``."""
    row = await _own(session, reviewer)
    row.active = False
    session.add(
        authority_event(request, reviewer, "notification.webhook_removed", detail={"url": row.url})
    )
    await commit_or_fail_closed(session)
