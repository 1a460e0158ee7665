"""Writing audit events. An event is durable before the answer it records leaves."""

import uuid
from contextlib import suppress
from datetime import datetime
from typing import TYPE_CHECKING, Any, NoReturn, TypedDict, Unpack

import structlog
from fastapi import Request
from sqlalchemy import JSON, bindparam, insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit.models import AuditEvent
from app.db import DATABASE_ERRORS, DatabaseUnavailable, HotConnection, HotStatement, utcnow
from app.errors import ProblemError

if TYPE_CHECKING:  # principals records its refusals through this module
    from app.auth.principals import Principal

log = structlog.get_logger()


class RequestContext(TypedDict):
    """Who asked from where: the two columns every event takes from its request."""

    request_id: str | None
    source_address: str | None


class EventRow(TypedDict, total=False):
    """An ``audit_events`` row for the hot path's Core INSERT: each column by name and
    type (tests/test_audit_store.py checks they are the table's). ``new_event`` sets
    every key, so a row read back always has them all."""

    id: uuid.UUID
    occurred_at: datetime | None
    event_type: str
    request_id: str | None
    principal: str | None
    organisation_id: uuid.UUID | None
    enquirer: dict[str, Any] | None
    enquirer_id: str | None
    purpose: str | None
    reason: str | None
    query: dict[str, Any] | None
    outcome: str
    refusal: str | None
    disclosed: dict[str, Any] | None
    entry_id: uuid.UUID | None
    entry_version: int | None
    authority_id: uuid.UUID | None
    detail: dict[str, Any] | None
    source_address: str | None


EVENT_COLUMNS = tuple(column.key for column in AuditEvent.__table__.columns)
# One INSERT naming every column, compiled once: the hot path (app/lookup) writes its
# events through it without the ORM. JSON columns bind None as SQL NULL, as the ORM
# does for an attribute never set; the database's trigger queues the row for sealing
# whichever way it is written.
INSERT_EVENT = HotStatement(
    insert(AuditEvent.__table__).values(
        {
            column.key: bindparam(
                column.key,
                type_=JSON(none_as_null=True) if isinstance(column.type, JSON) else column.type,
            )
            for column in AuditEvent.__table__.columns
        }
    )
)


def request_context(request: Request) -> RequestContext:
    """Who asked from where, for the event."""
    return {
        "request_id": getattr(request.state, "request_id", None),
        "source_address": request.client.host if request.client else None,
    }


def principal_event(
    request: Request, principal: "Principal", event_type: str, **fields: Any
) -> AuditEvent:
    """An event of the caller's: the principal and its organisation, and who asked from
    where (``fields`` set the rest)."""
    values: dict[str, Any] = {
        "principal": principal.subject,
        "organisation_id": principal.organisation_id,
        **request_context(request),
    }
    return AuditEvent(event_type=event_type, **(values | fields))


def authority_event(
    request: Request, principal: "Principal", event_type: str, **fields: Any
) -> AuditEvent:
    """An event of a custodian's about their own authority's records (the register, the
    enquiries about its children, the notifications, the webhook): ``authority_id`` is
    theirs, the outcome ``ok`` unless ``fields`` say otherwise."""
    own = {"authority_id": principal.organisation_id, "outcome": "ok"}
    return principal_event(request, principal, event_type, **(own | fields))


async def commit_or_fail_closed(session: AsyncSession) -> None:
    """Commit the transaction that holds the audit event, or refuse to answer.

    If the log cannot be written the caller gets 503 and nothing else.
    """
    try:
        await session.commit()
    except DATABASE_ERRORS as exc:
        log.error("audit_write_failed", error_type=type(exc).__name__)
        with suppress(*DATABASE_ERRORS):
            await session.rollback()
        raise audit_unavailable() from exc


def audit_unavailable() -> ProblemError:
    """The answer when an enquiry cannot be recorded (or its database cannot be read)."""
    return ProblemError(
        503,
        "Service unavailable",
        "The enquiry could not be recorded, so it was not answered. Try again shortly.",
        headers={"Retry-After": "5"},
    )


def new_event(**values: Unpack[EventRow]) -> EventRow:
    """An audit_events row for write_event: every column, unset ones None."""
    row: EventRow = dict.fromkeys(EVENT_COLUMNS)  # type: ignore[assignment]
    row["id"] = uuid.uuid4()
    row.update(values)
    return row


async def write_event(connection: HotConnection, event: EventRow) -> None:
    """INSERT one event (a row from new_event) and COMMIT, or refuse to answer (503).

    The Core twin of ``record`` for the lookup's hot path: same row, same columns,
    ``occurred_at`` stamped at the write as the ORM's column default would.
    """
    if event["occurred_at"] is None:
        event["occurred_at"] = utcnow()
    try:
        await connection.insert_one(INSERT_EVENT, event)
        await connection.commit()
    except DatabaseUnavailable as exc:
        log.error("audit_write_failed", error_type=str(exc))
        raise audit_unavailable() from exc


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


async def refuse_not_found(
    session: AsyncSession,
    request: Request,
    principal: "Principal",
    *,
    event_type: str,
    refusal: str,
    detail: dict[str, Any],
    message: str,
) -> NoReturn:
    """404 for what the caller may not see and for what does not exist alike, and on
    record either way: probing for another authority's records shows in the log."""
    event = principal_event(
        request, principal, event_type, refusal=refusal, detail=detail | {"path": request.url.path}
    )
    await refuse(session, event, ProblemError(404, "Not found", message, code=refusal))
