"""/v1/register: custodians keep their own authority's part of the register.

Thin handlers: the custodian and their entry come from app/register/deps.py (another
authority's entry is "not found", never "forbidden"), the reads from reads.py, the
changes from writes.py, the files from transfer.py; every statement starts from
queries.own_entries. Every read of a child's details and every change is an audit event.
"""

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse

from app.deps import SessionDep
from app.errors import ProblemError, responses
from app.register import reads, transfer, writes
from app.register.deps import Custodian, EntryToChange, OwnEntry
from app.register.models import RegisterEntry
from app.register.queries import StatusFilter
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
)

router = APIRouter(prefix="/v1/register", tags=["register"])

ETAG_HEADERS = {"ETag": {"description": "The entry's version: send it back as If-Match."}}


def _answer(response: Response, entry: RegisterEntry) -> EntryRead:
    """The entry as it stands, its version as the ETag on ``response``."""
    response.headers["ETag"] = reads.etag(entry)
    return reads.current(entry)


# --- list and search ---------------------------------------------------------------


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
    return await reads.list_page(
        session,
        request,
        custodian,
        status=status,
        review_overdue=review_overdue,
        limit=limit,
        cursor=cursor,
    )


@router.post(
    "/entries/search",
    response_model=list[EntryRead],
    summary="Find your authority's entries, live or ended, for one person",
)
async def search_entries(
    request: Request, custodian: Custodian, session: SessionDep, search: EntrySearch
) -> list[EntryRead]:
    return await reads.search(session, request, custodian, search)


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
    entry = await writes.create(session, request, custodian, data)
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
    entry: OwnEntry,
    request: Request,
    response: Response,
    custodian: Custodian,
    session: SessionDep,
) -> EntryRead:
    response.headers["ETag"] = reads.etag(entry)
    return await reads.read(session, request, custodian, entry)


@router.get(
    "/entries/{entry_id:uuid}/history",
    response_model=list[VersionRead],
    responses=responses("entry_not_found"),
    summary="Every version of an entry, oldest first, with who changed it, when and why",
)
async def history(
    entry: OwnEntry, request: Request, custodian: Custodian, session: SessionDep
) -> list[VersionRead]:
    return await reads.history(session, request, custodian, entry)


# What every change to an entry can answer (EntryToChange, then writes' checks and save).
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
    await writes.change(session, request, custodian, entry, change)
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
    await writes.review(session, request, custodian, entry, held)
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
    await writes.end(session, request, custodian, entry, ending)
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
    await writes.birth(session, request, custodian, entry, record)
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
    return await transfer.import_file(session, request, custodian, await request.body())


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
    export = await transfer.export_file(session, request, custodian)
    return StreamingResponse(
        export.chunks,
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{export.filename}"'},
    )
