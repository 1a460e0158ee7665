"""What the register's routes ask for: a custodian, and one of their own entries.

``load_entry`` is the one way to an entry by id, for every read and change of the
register and for the audit review's per-entry read: it fetches through
``own_entries`` (the tenant filter), and answers another authority's entry exactly as
an id that does not exist, 404, the attempt on record either way.
"""

import uuid
from datetime import date
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit.service import refuse_not_found
from app.auth.principals import Principal, require_scope
from app.deps import SessionDep
from app.errors import ProblemError
from app.identity.models import OrganisationKind, Scope
from app.register.models import RegisterEntry
from app.register.queries import own_entries
from app.register.reads import etag
from app.register.service import lock_register
from app.register.writes import require_live

admit_custodian = require_scope(
    Scope.register_manage,
    kinds=frozenset({OrganisationKind.local_authority}),
    event_type="register.refused",
    kind_refusal="not_custodian",
)
Custodian = Annotated[Principal, Depends(admit_custodian)]

NOT_FOUND = "No entry with this id in your authority's register."


async def load_entry(
    session: AsyncSession,
    request: Request,
    custodian: Principal,
    entry_id: uuid.UUID,
    *,
    for_change: bool = False,
    event_type: str = "register.refused",
    message: str = NOT_FOUND,
) -> RegisterEntry:
    """The custodian's own entry ``entry_id``; otherwise 404, refused as ``event_type``
    (``entry_not_found``). ``for_change``: the authority's register locked for writing
    (``lock_register``) and the row locked until the transaction ends."""
    statement = own_entries(custodian).where(RegisterEntry.id == entry_id)
    if for_change:
        await lock_register(session, custodian.organisation_id)
        statement = statement.with_for_update()
    entry = (await session.execute(statement)).scalar_one_or_none()
    if entry is None:
        await refuse_not_found(
            session,
            request,
            custodian,
            event_type=event_type,
            refusal="entry_not_found",
            detail={"entry_id": str(entry_id)},
            message=message,
        )
    return entry


async def _own_entry(
    entry_id: uuid.UUID, request: Request, custodian: Custodian, session: SessionDep
) -> RegisterEntry:
    return await load_entry(session, request, custodian, entry_id)


OwnEntry = Annotated[RegisterEntry, Depends(_own_entry)]


def require_version(if_match: str | None, entry: RegisterEntry) -> None:
    """Optimistic concurrency: a change must name the version it was made against."""
    if if_match is None or if_match.strip() == "*":
        raise ProblemError(
            428,
            "Precondition required",
            "Send If-Match with the ETag of the entry as you read it.",
            code="precondition_required",
        )
    if etag(entry) not in (tag.strip() for tag in if_match.split(",")):
        raise ProblemError(
            412,
            "Precondition failed",
            f"The entry has changed since you read it (it is now version {entry.version}): "
            "read it again and reapply your change.",
            code="precondition_failed",
        )


async def _entry_to_change(
    entry_id: uuid.UUID, request: Request, custodian: Custodian, session: SessionDep
) -> RegisterEntry:
    """The custodian's own entry, locked for the change, at the version the caller read
    (If-Match), and still live: what every change to an entry starts from."""
    entry = await load_entry(session, request, custodian, entry_id, for_change=True)
    require_version(request.headers.get("if-match"), entry)
    require_live(entry, date.today())
    return entry


EntryToChange = Annotated[RegisterEntry, Depends(_entry_to_change)]
