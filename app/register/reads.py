"""Reading the register as its custodian: the entry as they read it, its version as
an ETag, and the list, the search, the entry and its history, each read on record
(``register.read``) before it is answered.
"""

from datetime import date
from typing import Any

from fastapi import Request
from sqlalchemy import and_, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit.service import authority_event, commit_or_fail_closed
from app.auth.principals import Principal
from app.cursors import cursor_date, cursor_id, decode_cursor, encode_cursor
from app.register.models import RegisterEntry, RegisterEntryVersion
from app.register.queries import StatusFilter, count_of, for_person, listed
from app.register.schemas import EntryPage, EntryRead, EntrySearch, VersionRead, person_read
from app.register.service import snapshot

SEARCH_LIMIT = 50


def _date(value: Any) -> date | None:
    return date.fromisoformat(value) if isinstance(value, str) else value


def entry_read(values: dict[str, Any], as_of: date) -> EntryRead:
    """An entry (or a version's snapshot) as its custodian reads it, as of a date: a child
    who has turned 18 is shown ended (``reached_18``) whether or not anyone ended it."""
    ended_on, end_reason = _date(values["ended_on"]), values["end_reason"]
    adult_on = _date(values["adult_on"])
    if ended_on is None and adult_on is not None and adult_on <= as_of:
        ended_on, end_reason = adult_on, "reached_18"
    next_review = _date(values["next_review"])
    assert next_review is not None
    return EntryRead(
        id=values["id"],
        version=values["version"],
        authority_id=values["authority_id"],
        status="ended" if ended_on else "active",
        unborn=values["unborn"],
        child=person_read("child", values),
        mother=person_read("mother", values),
        expected_delivery_date=values["expected_delivery_date"],
        categories=values["categories"],
        plan_start=values["plan_start"],
        next_review=next_review,
        last_review=values.get("last_review"),
        review_overdue=ended_on is None and next_review < as_of,
        lead_professional=values["lead_professional"],
        team_contact=values["team_contact"],
        notes=values["notes"],
        ended_on=ended_on,
        end_reason=end_reason,
        updated_at=values["updated_at"],
        updated_by=values["updated_by"],
    )


def current(entry: RegisterEntry) -> EntryRead:
    """The entry as it stands today."""
    values = snapshot(entry)
    values["updated_at"] = entry.updated_at
    return entry_read(values, date.today())


def etag(entry: RegisterEntry) -> str:
    """The entry's version, as the ETag a change names in If-Match."""
    return f'"{entry.version}"'


async def audited_read(
    session: AsyncSession, request: Request, custodian: Principal, **fields: Any
) -> None:
    """Custodians see children's details: each read is on record before it is answered."""
    session.add(authority_event(request, custodian, "register.read", **fields))
    await commit_or_fail_closed(session)


async def list_page(
    session: AsyncSession,
    request: Request,
    custodian: Principal,
    *,
    status: StatusFilter = "active",
    review_overdue: bool | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> EntryPage:
    """One page of the custodian's entries, soonest review first, with the count of all
    that match the filters."""
    today = date.today()
    statement = listed(custodian, status, review_overdue, today)
    count = (await session.execute(count_of(statement))).scalar_one()
    if cursor is not None:
        review_text, id_text = decode_cursor(cursor, 2)
        after_review, after_id = cursor_date(review_text), cursor_id(id_text)
        statement = statement.where(
            or_(
                RegisterEntry.next_review > after_review,
                and_(RegisterEntry.next_review == after_review, RegisterEntry.id > after_id),
            )
        )
    statement = statement.order_by(RegisterEntry.next_review, RegisterEntry.id).limit(limit + 1)
    entries = list((await session.execute(statement)).scalars())
    next_cursor = None
    if len(entries) > limit:
        entries = entries[:limit]
        last = entries[-1]
        next_cursor = encode_cursor(last.next_review.isoformat(), str(last.id))
    items = [current(entry) for entry in entries]
    await audited_read(
        session,
        request,
        custodian,
        detail={
            "action": "list",
            "status": status,
            "review_overdue": review_overdue,
            "returned": len(items),
        },
    )
    return EntryPage(items=items, count=count, next_cursor=next_cursor)


async def search(
    session: AsyncSession, request: Request, custodian: Principal, query: EntrySearch
) -> list[EntryRead]:
    """The custodian's entries for one person, newest plan first (at most 50)."""
    statement = for_person(custodian, query).order_by(RegisterEntry.plan_start.desc())
    entries = (await session.execute(statement.limit(SEARCH_LIMIT))).scalars()
    items = [current(entry) for entry in entries]
    await audited_read(
        session,
        request,
        custodian,
        query=query.model_dump(mode="json"),
        detail={"action": "search", "returned": len(items)},
    )
    return items


async def read(
    session: AsyncSession, request: Request, custodian: Principal, entry: RegisterEntry
) -> EntryRead:
    """One entry (from ``load_entry``), its read on record."""
    read_entry = current(entry)
    await audited_read(
        session,
        request,
        custodian,
        entry_id=entry.id,
        entry_version=entry.version,
        detail={"action": "read"},
    )
    return read_entry


async def history(
    session: AsyncSession, request: Request, custodian: Principal, entry: RegisterEntry
) -> list[VersionRead]:
    """Every version of one entry (from ``load_entry``), oldest first, its read on record."""
    versions = (
        await session.execute(
            select(RegisterEntryVersion)
            .where(RegisterEntryVersion.entry_id == entry.id)
            .order_by(RegisterEntryVersion.version)
        )
    ).scalars()
    items = [
        VersionRead(
            version=version.version,
            changed_at=version.changed_at,
            changed_by=version.changed_by,
            reason=version.change_reason,
            entry=entry_read(
                {**version.snapshot, "updated_at": version.changed_at},
                version.changed_at.date(),
            ),
        )
        for version in versions
    ]
    await audited_read(
        session,
        request,
        custodian,
        entry_id=entry.id,
        entry_version=entry.version,
        detail={"action": "history"},
    )
    return items
