"""/v1/register: custodians keep their own authority's part of the register.

Every statement is filtered by the custodian's authority: another authority's
entry is "not found", never "forbidden", so its existence is not confirmed.
Every read of a child's details and every change is an audit event.
"""

import asyncio
import csv
import hashlib
import io
import uuid
from collections.abc import AsyncIterator
from datetime import date, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import ValidationError
from sqlalchemy import Select, and_, func, not_, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.audit.models import AuditEvent
from app.audit.service import commit_or_fail_closed, refuse, request_context
from app.auth.principals import Principal, require_scope
from app.cursors import cursor_date, cursor_id, decode_cursor, encode_cursor
from app.db import READ_ONLY_OPTION
from app.deps import SessionDep
from app.errors import ProblemError, responses, safe_validation_errors
from app.identity.models import Organisation, OrganisationKind, Scope
from app.register import bulk
from app.register.csvformat import (
    CATEGORY_SEPARATOR,
    EXPORT_COLUMNS,
    ParsedRow,
    RowProblem,
    parse_csv,
    plural,
)
from app.register.identifiers import match_key
from app.register.models import RegisterEntry, RegisterEntryVersion
from app.register.rules import Problem, entry_problems, review_problems
from app.register.schemas import (
    BirthRecord,
    EntryChange,
    EntryCreate,
    EntryEnd,
    EntryPage,
    EntryRead,
    EntrySearch,
    ImportResult,
    ReviewRecord,
    VersionRead,
    person_read,
)
from app.register.service import (
    Actor,
    change_entry,
    create_entry,
    end_entry,
    entry_data,
    entry_values,
    live,
    live_duplicate,
    lock_register,
    record_birth,
    record_review,
    snapshot,
)
from app.spreadsheet import safe_cell

router = APIRouter(prefix="/v1/register", tags=["register"])

_custodian = require_scope(
    Scope.register_manage,
    kinds=frozenset({OrganisationKind.local_authority}),
    event_type="register.refused",
    kind_refusal="not_custodian",
)
Custodian = Annotated[Principal, Depends(_custodian)]

MAX_IMPORT_PROBLEMS = 1_000
# An unborn child's birth may be recorded from 20 weeks before the expected date to 6 after.
EARLIEST_BIRTH = timedelta(weeks=20)
LATEST_BIRTH = timedelta(weeks=6)
ETAG_HEADERS = {"ETag": {"description": "The entry's version: send it back as If-Match."}}


# --- reading an entry --------------------------------------------------------------


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


def _current(entry: RegisterEntry) -> EntryRead:
    values = snapshot(entry)
    values["updated_at"] = entry.updated_at
    return entry_read(values, date.today())


def _etag(entry: RegisterEntry) -> str:
    return f'"{entry.version}"'


def _answer(response: Response, entry: RegisterEntry) -> EntryRead:
    response.headers["ETag"] = _etag(entry)
    return _current(entry)


def _actor(request: Request, custodian: Principal) -> Actor:
    context = request_context(request)
    return Actor(
        subject=custodian.subject,
        organisation_id=custodian.organisation_id,
        request_id=context["request_id"],
        source_address=context["source_address"],
    )


def _event(request: Request, custodian: Principal, event_type: str, **fields: Any) -> AuditEvent:
    values: dict[str, Any] = {
        "principal": custodian.subject,
        "organisation_id": custodian.organisation_id,
        "authority_id": custodian.organisation_id,
        "outcome": "ok",
        **request_context(request),
    }
    return AuditEvent(event_type=event_type, **(values | fields))


async def _audited_read(
    session: AsyncSession, request: Request, custodian: Principal, **fields: Any
) -> None:
    """Custodians see children's details: each read is on record before it is answered."""
    session.add(_event(request, custodian, "register.read", **fields))
    await commit_or_fail_closed(session)


async def _own_entry(
    session: AsyncSession,
    request: Request,
    custodian: Principal,
    entry_id: uuid.UUID,
    *,
    for_change: bool = False,
) -> RegisterEntry:
    statement = select(RegisterEntry).where(
        RegisterEntry.id == entry_id, RegisterEntry.authority_id == custodian.organisation_id
    )
    if for_change:
        await lock_register(session, custodian.organisation_id)
        statement = statement.with_for_update()
    entry = (await session.execute(statement)).scalar_one_or_none()
    if entry is None:
        event = _event(
            request,
            custodian,
            "register.refused",
            outcome="refused",
            refusal="entry_not_found",
            authority_id=None,
            detail={"entry_id": str(entry_id), "path": request.url.path},
        )
        await refuse(
            session,
            event,
            ProblemError(
                404,
                "Not found",
                "No entry with this id in your authority's register.",
                code="entry_not_found",
            ),
        )
    return entry


def _require_version(request: Request, entry: RegisterEntry) -> None:
    """Optimistic concurrency: a change must name the version it was made against."""
    header = request.headers.get("if-match")
    if header is None or header.strip() == "*":
        raise ProblemError(
            428,
            "Precondition required",
            "Send If-Match with the ETag of the entry as you read it.",
            code="precondition_required",
        )
    if _etag(entry) not in (tag.strip() for tag in header.split(",")):
        raise ProblemError(
            412,
            "Precondition failed",
            f"The entry has changed since you read it (it is now version {entry.version}): "
            "read it again and reapply your change.",
            code="precondition_failed",
        )


def _require_live(entry: RegisterEntry, today: date) -> None:
    if entry.ended_on is not None or (entry.adult_on is not None and entry.adult_on <= today):
        raise ProblemError(
            409,
            "Plan ended",
            "This plan has ended and entries are never reopened: create a new entry.",
            code="plan_ended",
        )


async def _entry_to_change(
    entry_id: uuid.UUID, request: Request, custodian: Custodian, session: SessionDep
) -> RegisterEntry:
    """The custodian's own entry, locked for the change, at the version the caller read
    (If-Match), and still live: what every change to an entry starts from."""
    entry = await _own_entry(session, request, custodian, entry_id, for_change=True)
    _require_version(request, entry)
    _require_live(entry, date.today())
    return entry


EntryToChange = Annotated[RegisterEntry, Depends(_entry_to_change)]


def _refuse_problems(problems: list[Problem]) -> None:
    if problems:
        raise ProblemError(
            422,
            "Invalid entry",
            "; ".join(p.msg for p in problems),
            code="invalid_entry",
            errors=[p.as_error() for p in problems],
        )


async def _refuse_duplicate(
    session: AsyncSession,
    custodian: Principal,
    data: EntryCreate,
    today: date,
    excluding: uuid.UUID | None = None,
) -> None:
    existing = await live_duplicate(
        session, custodian.organisation_id, data, today, excluding=excluding
    )
    if existing is not None:
        raise ProblemError(
            409,
            "Already on the register",
            f"An active entry for this child already exists in your register: {existing}.",
            code="already_registered",
            errors=[
                {"loc": [], "msg": "duplicate", "type": "duplicate", "entry_id": str(existing)}
            ],
        )


async def _save(session: AsyncSession) -> None:
    """Flush first: a unique index that catches a duplicate the checks missed is a 409."""
    try:
        await session.flush()
    except IntegrityError as exc:
        await session.rollback()
        raise ProblemError(
            409,
            "Already on the register",
            "An active entry for this child already exists.",
            code="already_registered",
        ) from exc
    await commit_or_fail_closed(session)


# --- list and search ---------------------------------------------------------------


StatusFilter = Literal["active", "ended", "all"]


def _listed(custodian: Principal, status: StatusFilter, overdue: bool | None, today: date) -> Any:
    conditions = [RegisterEntry.authority_id == custodian.organisation_id]
    if status == "active":
        conditions.append(live(today))
    elif status == "ended":
        conditions.append(not_(live(today)))
    if overdue is not None:
        is_overdue = and_(live(today), RegisterEntry.next_review < today)
        conditions.append(is_overdue if overdue else not_(is_overdue))
    return and_(*conditions)


@router.get(
    "/entries",
    response_model=EntryPage,
    summary="List your authority's entries, soonest review first",
)
async def list_entries(
    request: Request,
    custodian: Custodian,
    session: SessionDep,
    status: StatusFilter = "active",
    review_overdue: Annotated[
        bool | None, Query(description="true: only live plans whose review date has passed.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> EntryPage:
    today = date.today()
    where = _listed(custodian, status, review_overdue, today)
    count = (await session.execute(select(func.count()).where(where))).scalar_one()
    statement = select(RegisterEntry).where(where)
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
    items = [_current(entry) for entry in entries]
    await _audited_read(
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


@router.post(
    "/entries/search",
    response_model=list[EntryRead],
    summary="Find your authority's entries, live or ended, for one person",
)
async def search_entries(
    request: Request, custodian: Custodian, session: SessionDep, search: EntrySearch
) -> list[EntryRead]:
    if search.nhs_number is not None:
        person = or_(
            RegisterEntry.subject_nhs_number == search.nhs_number,
            RegisterEntry.child_nhs_number == search.nhs_number,
            RegisterEntry.mother_nhs_number == search.nhs_number,
        )
    else:
        assert search.given_name is not None
        assert search.family_name is not None
        assert search.date_of_birth is not None
        person = RegisterEntry.subject_match_key == match_key(
            search.given_name, search.family_name, search.date_of_birth
        )
    entries = (
        await session.execute(
            select(RegisterEntry)
            .where(RegisterEntry.authority_id == custodian.organisation_id, person)
            .order_by(RegisterEntry.plan_start.desc())
            .limit(50)
        )
    ).scalars()
    items = [_current(entry) for entry in entries]
    await _audited_read(
        session,
        request,
        custodian,
        query=search.model_dump(mode="json"),
        detail={"action": "search", "returned": len(items)},
    )
    return items


# --- one entry ---------------------------------------------------------------------


@router.post(
    "/entries",
    status_code=201,
    response_model=EntryRead,
    responses={
        201: {"headers": {**ETAG_HEADERS, "Location": {"description": "The new entry."}}},
        **responses("already_registered", "invalid_entry"),
    },
    summary="Put a child on the register (initial child protection conference)",
)
async def create(
    request: Request,
    response: Response,
    custodian: Custodian,
    session: SessionDep,
    data: EntryCreate,
) -> EntryRead:
    today = date.today()
    _refuse_problems(entry_problems(data, today))
    await lock_register(session, custodian.organisation_id)
    await _refuse_duplicate(session, custodian, data, today)
    entry = create_entry(
        session,
        actor=_actor(request, custodian),
        authority_id=custodian.organisation_id,
        data=data,
    )
    await _save(session)
    response.headers["Location"] = f"/v1/register/entries/{entry.id}"
    return _answer(response, entry)


# `:uuid` on every entry path: `/entries/search` is then no entry's path, so a GET or PATCH
# of it is a 405 naming POST (app/errors.py), not a lookup of an entry called "search".
@router.get(
    "/entries/{entry_id:uuid}",
    response_model=EntryRead,
    responses={200: {"headers": ETAG_HEADERS}, **responses("entry_not_found")},
    summary="Read one entry (its ETag is the version to change it against)",
)
async def read(
    entry_id: uuid.UUID,
    request: Request,
    response: Response,
    custodian: Custodian,
    session: SessionDep,
) -> EntryRead:
    entry = await _own_entry(session, request, custodian, entry_id)
    answer = _answer(response, entry)
    await _audited_read(
        session,
        request,
        custodian,
        entry_id=entry.id,
        entry_version=entry.version,
        detail={"action": "read"},
    )
    return answer


@router.get(
    "/entries/{entry_id:uuid}/history",
    response_model=list[VersionRead],
    responses=responses("entry_not_found"),
    summary="Every version of an entry, oldest first, with who changed it, when and why",
)
async def history(
    entry_id: uuid.UUID, request: Request, custodian: Custodian, session: SessionDep
) -> list[VersionRead]:
    entry = await _own_entry(session, request, custodian, entry_id)
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
    await _audited_read(
        session,
        request,
        custodian,
        entry_id=entry.id,
        entry_version=entry.version,
        detail={"action": "history"},
    )
    return items


# What every change to an entry can answer (_entry_to_change, _refuse_problems, _save).
_CHANGE_CODES = (
    "entry_not_found",
    "precondition_required",
    "precondition_failed",
    "plan_ended",
    "invalid_entry",
    "already_registered",
)
_CHANGE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"headers": ETAG_HEADERS},
    **responses(*_CHANGE_CODES),
}


@router.patch(
    "/entries/{entry_id:uuid}",
    response_model=EntryRead,
    responses={200: {"headers": ETAG_HEADERS}, **responses(*_CHANGE_CODES, "unborn_child")},
    summary="Change an entry (If-Match required): categories, dates, identifiers, notes",
)
async def change(
    entry: EntryToChange,
    request: Request,
    response: Response,
    custodian: Custodian,
    session: SessionDep,
    change: EntryChange,
) -> EntryRead:
    today = date.today()
    changes = change.model_dump(exclude_unset=True, exclude={"reason"})
    if entry.unborn and "child" in changes:
        raise ProblemError(
            409,
            "Unborn child",
            "Record the birth (POST …/birth) to turn this entry into the child's.",
            code="unborn_child",
        )
    try:
        data = EntryCreate.model_validate(entry_data(entry).model_dump() | changes)
    except ValidationError as exc:
        errors = safe_validation_errors(exc.errors())
        raise ProblemError(422, "Invalid entry", code="invalid_entry", errors=errors) from exc
    _refuse_problems(entry_problems(data, today))
    await _refuse_duplicate(session, custodian, data, today, excluding=entry.id)
    change_entry(session, entry, actor=_actor(request, custodian), data=data, reason=change.reason)
    await _save(session)
    return _answer(response, entry)


@router.post(
    "/entries/{entry_id:uuid}/reviews",
    response_model=EntryRead,
    responses=_CHANGE_RESPONSES,
    summary="Record a review conference; the next is due within 6 months",
)
async def review(
    entry: EntryToChange,
    request: Request,
    response: Response,
    custodian: Custodian,
    session: SessionDep,
    held: ReviewRecord,
) -> EntryRead:
    today = date.today()
    problems = [
        Problem(("held_on",) if p.loc == ("last_review",) else p.loc, p.msg)
        for p in review_problems(entry.plan_start, held.held_on, held.next_review, today)
    ]
    if entry.last_review is not None and held.held_on < entry.last_review:
        problems.append(Problem(("held_on",), "a later review is already recorded"))
    _refuse_problems(problems)
    record_review(
        session,
        entry,
        actor=_actor(request, custodian),
        held_on=held.held_on,
        next_review=held.next_review,
        note=held.note,
    )
    await _save(session)
    return _answer(response, entry)


@router.post(
    "/entries/{entry_id:uuid}/end",
    response_model=EntryRead,
    responses=_CHANGE_RESPONSES,
    summary="End a plan (de-registration) on recorded grounds; it is never disclosed again",
)
async def end(
    entry: EntryToChange,
    request: Request,
    response: Response,
    custodian: Custodian,
    session: SessionDep,
    ending: EntryEnd,
) -> EntryRead:
    today = date.today()
    problems = []
    if ending.ended_on > today:
        problems.append(Problem(("ended_on",), "a plan cannot be ended in advance"))
    if ending.ended_on < entry.plan_start:
        problems.append(Problem(("ended_on",), "the end date is before the plan start"))
    _refuse_problems(problems)
    end_entry(
        session,
        entry,
        actor=_actor(request, custodian),
        ended_on=ending.ended_on,
        reason=ending.reason.value,
        note=ending.note,
    )
    await _save(session)
    return _answer(response, entry)


@router.post(
    "/entries/{entry_id:uuid}/birth",
    response_model=EntryRead,
    responses={200: {"headers": ETAG_HEADERS}, **responses(*_CHANGE_CODES, "already_born")},
    summary="Record an unborn child's birth: the entry becomes the child's",
)
async def birth(
    entry: EntryToChange,
    request: Request,
    response: Response,
    custodian: Custodian,
    session: SessionDep,
    record: BirthRecord,
) -> EntryRead:
    today = date.today()
    if not entry.unborn:
        raise ProblemError(
            409, "Already born", "This entry is already a born child's.", code="already_born"
        )
    expected = entry.expected_delivery_date
    assert expected is not None
    born = record.child.date_of_birth
    problems = []
    if born <= today and not expected - EARLIEST_BIRTH <= born <= expected + LATEST_BIRTH:
        problems.append(
            Problem(
                ("child", "date_of_birth"),
                "more than 20 weeks before or 6 weeks after the expected delivery date: "
                "correct the expected date first if it was wrong",
            )
        )
    data = entry_data(entry).model_copy(
        update={"child": record.child, "expected_delivery_date": None}
    )
    problems += entry_problems(data, today)
    _refuse_problems(problems)
    await _refuse_duplicate(session, custodian, data, today, excluding=entry.id)
    record_birth(session, entry, actor=_actor(request, custodian), data=data, note=record.note)
    await _save(session)
    return _answer(response, entry)


# --- import and export ------------------------------------------------------------


@router.post(
    "/imports",
    status_code=201,
    response_model=ImportResult,
    responses=responses("unsupported_media_type", "invalid_rows", "already_registered"),
    summary="Import a CSV file of entries: all rows or none, with a row-by-row report",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"text/csv": {"schema": {"type": "string"}}},
        }
    },
)
async def import_entries(
    request: Request, custodian: Custodian, session: SessionDep
) -> ImportResult:
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "text/csv":
        raise ProblemError(
            415,
            "Unsupported media type",
            "Send the file as text/csv.",
            code="unsupported_media_type",
        )
    body = await request.body()
    digest = hashlib.sha256(body).hexdigest()
    import_id = uuid.uuid4()
    today = date.today()
    # The file is read and its rows built in a thread, before any lock: for a large
    # file that is seconds of work, which on the event loop would stall every lookup
    # of this worker, and under the lock every writer (on SQLite, every lookup).
    rows, problems, entries, versions = await asyncio.to_thread(
        _read_import,
        body,
        today,
        authority_id=custodian.organisation_id,
        actor=_actor(request, custodian),
        import_id=import_id,
    )
    if not problems:
        await lock_register(session, custodian.organisation_id)
    # Refused either way when the rows have problems, so no lock: the duplicates are
    # reported beside them, to be corrected in the same pass.
    existing = await bulk.live_index(session, custodian.organisation_id, today)
    problems = bulk.every_problem(rows, entries, problems, existing)
    detail = {"import_id": str(import_id), "sha256": digest, "rows": len(rows)}
    if problems:
        event = _event(
            request,
            custodian,
            "register.import_refused",
            outcome="refused",
            refusal="invalid_rows",
            detail={**detail, "problems": len(problems)},
        )
        shown = problems[:MAX_IMPORT_PROBLEMS]
        more = f" (the first {len(shown)} are listed)" if len(problems) > len(shown) else ""
        await refuse(
            session,
            event,
            ProblemError(
                422,
                "Import refused",
                f"{plural(len(problems), 'problem')}{more}; nothing was imported. "
                "Each error names the row (the header is row 1) and the column.",
                code="invalid_rows",
                errors=[problem.as_error() for problem in shown],
            ),
        )
    await bulk.insert_rows(session, entries, versions)
    session.add(_event(request, custodian, "register.imported", detail=detail))
    await _save(session)
    return ImportResult(import_id=import_id, imported=len(rows), sha256=digest)


def _read_import(
    body: bytes, today: date, *, authority_id: uuid.UUID, actor: Actor, import_id: uuid.UUID
) -> tuple[list[ParsedRow], list[RowProblem], list[dict[str, Any]], list[dict[str, Any]]]:
    """The file's valid rows, its problems, and the rows to insert (with problems, only
    the valid rows' :func:`entry_values`, to find duplicates among them)."""
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError:
        return [], [RowProblem(1, "", "the file is not UTF-8 text")], [], []
    rows, problems = parse_csv(text, today)
    values = [entry_values(row.data) for row in rows]
    if problems:
        return rows, problems, values, []
    entries, versions = bulk.new_rows(
        values, authority_id=authority_id, actor=actor, import_id=import_id
    )
    return rows, problems, entries, versions


@router.post(
    "/exports",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"text/csv": {"schema": {"type": "string"}}},
            "description": "Your authority's live plans: identifiers, categories, contact.",
        },
    },
    summary="Export your live entries as CSV, the reference points' continuity copy (audited)",
)
async def export_entries(
    request: Request, custodian: Custodian, session: SessionDep
) -> StreamingResponse:
    today = date.today()
    where = _listed(custodian, "active", None, today)
    count = (await session.execute(select(func.count()).where(where))).scalar_one()
    authority = await session.get_one(Organisation, custodian.organisation_id)
    contact = (authority.contact_name, authority.contact_phone)
    # On record before the first byte leaves (fail closed).
    session.add(_event(request, custodian, "register.exported", detail={"entries": count}))
    await commit_or_fail_closed(session)
    statement = select(RegisterEntry).where(where).order_by(RegisterEntry.id)
    return StreamingResponse(
        _export_csv(request.app.state.sessionmaker, statement, contact),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="register-{today.isoformat()}.csv"'},
    )


async def _export_csv(
    sessionmaker: async_sessionmaker[AsyncSession],
    statement: Select[RegisterEntry],
    contact: tuple[str, str],
) -> AsyncIterator[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(EXPORT_COLUMNS)
    async with sessionmaker() as session:
        await session.connection(execution_options={READ_ONLY_OPTION: True})
        result = await session.stream_scalars(statement.execution_options(yield_per=1_000))
        async for entries in result.partitions():
            for entry in entries:
                values = {
                    **snapshot(entry),
                    "entry_id": entry.id,
                    "categories": CATEGORY_SEPARATOR.join(entry.categories),
                    "contact_name": contact[0],
                    "contact_phone": contact[1],
                }
                writer.writerow([safe_cell(values[column]) for column in EXPORT_COLUMNS])
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    if buffer.tell():
        yield buffer.getvalue()
