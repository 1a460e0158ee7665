"""Writing audit events. An event is durable before the answer it records leaves."""

from typing import Any, NoReturn

import structlog
from fastapi import Request
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit.models import AuditEvent
from app.errors import ProblemError

log = structlog.get_logger()


def request_context(request: Request) -> dict[str, Any]:
    """Who asked from where, for the event."""
    return {
        "request_id": getattr(request.state, "request_id", None),
        "source_address": request.client.host if request.client else None,
    }


async def commit_or_fail_closed(session: AsyncSession) -> None:
    """Commit the transaction that holds the audit event, or refuse to answer.

    If the log cannot be written the caller gets 503 and nothing else.
    """
    try:
        await session.commit()
    except SQLAlchemyError as exc:
        await session.rollback()
        log.error("audit_write_failed", error_type=type(exc).__name__)
        raise ProblemError(
            503,
            "Service unavailable",
            "The enquiry could not be recorded, so it was not answered. Try again shortly.",
            headers={"Retry-After": "5"},
        ) from exc


async def record(session: AsyncSession, event: AuditEvent) -> AuditEvent:
    """Write one event on its own and commit it (refusals, security events)."""
    session.add(event)
    await commit_or_fail_closed(session)
    return event


async def refuse(session: AsyncSession, event: AuditEvent, problem: ProblemError) -> NoReturn:
    """Record a refusal, then raise the problem that answers it."""
    event.outcome = "refused"
    await record(session, event)
    log.info("request_refused", refusal=event.refusal, event_id=str(event.id))
    raise problem
