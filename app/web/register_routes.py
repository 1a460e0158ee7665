"""The custodian's register pages: the authority's entries, one entry and its history,
and the forms that put a child on the register, change an entry, record a review, end
a plan and record a birth; the continuity export and the CSV import.

Each page does what the API does, through the same code: the custodian is admitted by
app/register/deps.py's ``admit_custodian``, every entry comes through ``load_entry``
(another authority's is "not found", on record), the reads are app/register/reads.py's
and the writes app/register/writes.py's and transfer.py's, so every check and every
audit event is the API's. A child's identifiers travel only in POST bodies, never in
a URL. Dates are shown DD/MM/YYYY and typed DD/MM/YYYY or YYYY-MM-DD.
"""

import uuid
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse, StreamingResponse
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.datastructures import FormData, UploadFile

from app.auth.principals import Principal
from app.config import Settings
from app.deps import SessionDep, SettingsDep
from app.errors import ProblemError
from app.identity.models import User
from app.register import reads, transfer, writes
from app.register.csvformat import IMPORT_COLUMNS, PERSON_FIELDS, plural
from app.register.deps import admit_custodian, load_entry
from app.register.models import END_REASON_WORDS, Category, RegisterEntry
from app.register.queries import StatusFilter
from app.register.schemas import (
    BirthRecord,
    EntryChange,
    EntryCreate,
    EntryEnd,
    EntryRead,
    EntrySearch,
    ReviewRecord,
    VersionRead,
)
from app.web.pages import (
    CATEGORIES,
    SECURITY_HEADERS,
    form_refused,
    render,
    session_ended,
    to_sign_in,
)
from app.web.register_forms import (
    CHANGE_FIELDS,
    DATE_HELP,
    ENTRY_FIELDS,
    LABELS,
    changes_in_words,
    entry_body,
    form_of,
    in_form_order,
    merged_after_conflict,
    parsed_date,
    refusal,
    step_body,
    typed_values,
    validated,
    version_of,
)
from app.web.session import CSRF_FIELD, SignedInDep

router = APIRouter(include_in_schema=False)

PAGE_SIZE = 25
PLAN_STATUSES: dict[str, str] = {
    "active": "Active plans",
    "ended": "Ended plans",
    "all": "All plans",
}
STATUS_FILTERS: dict[str, StatusFilter] = {"active": "active", "ended": "ended", "all": "all"}
CONFLICT = "Someone changed this entry while you were editing"
# A search by name needs all three (EntrySearch).
NAME_SEARCH = ("given_name", "family_name", "date_of_birth")


# --- who may use the pages -------------------------------------------------------------


async def _admit(
    request: Request, session: AsyncSession, settings: Settings, signed_in: Any
) -> Principal | Response:
    """The signed-in custodian; else the sign-in page, or a 403 page saying whom to call
    (the refusal on record as the API records it: ``register.refused``)."""
    if signed_in is None:
        if request.method == "POST":
            return await session_ended(request, settings)
        return to_sign_in(settings)
    try:
        return await admit_custodian(request, signed_in.principal, session)
    except ProblemError as problem:
        if problem.status != 403:
            raise
        return _message_page(
            request,
            settings,
            signed_in.principal,
            403,
            "These pages are for the register's custodians",
            "Only a local authority's custodians keep the register. If you need to know "
            "whether a child is on a plan, use the lookup page; if you need the register "
            "changed, call the child's local authority.",
        )


def _message_page(
    request: Request,
    settings: Settings,
    principal: Principal,
    status: int,
    title: str,
    message: str,
) -> Response:
    return render(
        request,
        settings,
        "error.html",
        status_code=status,
        principal=principal,
        title=title,
        message=message,
    )


async def _entry(
    session: AsyncSession,
    request: Request,
    settings: Settings,
    custodian: Principal,
    entry_id: uuid.UUID,
    *,
    for_change: bool = False,
) -> RegisterEntry | Response:
    """The custodian's own entry (``load_entry``), or the 404 page: another authority's
    entry is "not found" as an id that does not exist, and on record either way."""
    try:
        return await load_entry(session, request, custodian, entry_id, for_change=for_change)
    except ProblemError as problem:
        if problem.code != "entry_not_found":
            raise
        return _message_page(
            request,
            settings,
            custodian,
            404,
            "Entry not found",
            "There is no entry with this id in your authority's register.",
        )


async def _posted(request: Request, settings: Settings) -> tuple[FormData, Response | None]:
    """The form, and the refusal page when it did not come from our own pages."""
    form = await request.form()
    return form, form_refused(request, settings, form.get(CSRF_FIELD))


def _page(
    request: Request,
    settings: Settings,
    custodian: Principal,
    template: str,
    *,
    status_code: int = 200,
    **context: Any,
) -> Response:
    error = context.get("error")
    if error and error.get("fields"):
        context["error"] = error | {"fields": in_form_order(error["fields"])}
    return render(
        request,
        settings,
        template,
        status_code=status_code,
        principal=custodian,
        who=custodian.display_name,
        labels=LABELS,
        categories=CATEGORIES,
        end_reasons=END_REASON_WORDS,
        **context,
    )


# --- reading forms ---------------------------------------------------------------------


# --- the list ---------------------------------------------------------------------------


@router.get("/web/register")
async def register_page(
    request: Request, session: SessionDep, settings: SettingsDep, signed_in: SignedInDep
) -> Response:
    admitted = await _admit(request, session, settings, signed_in)
    if isinstance(admitted, Response):
        return admitted
    params = request.query_params
    status = STATUS_FILTERS.get(params.get("status", ""), "active")
    overdue = params.get("overdue") == "1"
    cursor = params.get("cursor") or None
    page = await reads.list_page(
        session,
        request,
        admitted,
        status=status,
        review_overdue=True if overdue else None,
        limit=PAGE_SIZE,
        cursor=cursor,
    )
    return _page(
        request,
        settings,
        admitted,
        "register_list.html",
        title="Your authority's register",
        page=page,
        filters={"status": status, "overdue": overdue, "paged": cursor is not None},
        statuses=PLAN_STATUSES,
        form={},
    )


SEARCH_FIELDS = ("nhs_number", "given_name", "family_name", "date_of_birth")


@router.post("/web/register/search")
async def search(
    request: Request, session: SessionDep, settings: SettingsDep, signed_in: SignedInDep
) -> Response:
    form, refused = await _posted(request, settings)
    if refused is not None:
        return refused
    admitted = await _admit(request, session, settings, signed_in)
    if isinstance(admitted, Response):
        return admitted
    typed = typed_values(form, SEARCH_FIELDS)
    errors: dict[str, str] = {}
    raw = {
        "nhs_number": typed["nhs_number"] or None,
        "given_name": typed["given_name"] or None,
        "family_name": typed["family_name"] or None,
        "date_of_birth": parsed_date(typed, "date_of_birth", errors),
    }
    query = validated(EntrySearch, raw, errors, whole="nhs_number")
    if errors and "nhs_number" in errors and not typed["nhs_number"]:
        missing = [field for field in NAME_SEARCH if not typed[field]]
        if len(missing) < len(NAME_SEARCH):
            # Some of the names and date typed: say which are missing, beside them.
            del errors["nhs_number"]
            for field in missing:
                errors.setdefault(
                    field,
                    "This is needed to search by name, or search by the NHS number alone."
                    + (f" {DATE_HELP}" if field == "date_of_birth" else ""),
                )
        else:
            errors["nhs_number"] = (
                "Enter the NHS number, or the given name, family name and date of birth."
            )
    context: dict[str, Any] = {
        "title": "Your authority's register",
        "filters": {"status": "active", "overdue": False, "paged": False},
        "statuses": PLAN_STATUSES,
        "form": typed,
    }
    if query is None or errors:
        return _page(
            request,
            settings,
            admitted,
            "register_list.html",
            status_code=422,
            errors=errors,
            error={"title": "Check the search", "fields": errors},
            page=None,
            **context,
        )
    found = await reads.search(session, request, admitted, query)
    return _page(
        request, settings, admitted, "register_list.html", found=found, page=None, **context
    )


# --- one entry --------------------------------------------------------------------------


async def _names(session: AsyncSession, versions: list[VersionRead]) -> dict[str, str]:
    """Staff names for the users who made the changes (others as recorded)."""
    ids = set()
    for version in versions:
        kind, _, text = version.changed_by.partition(":")
        if kind == "user":
            try:
                ids.add(uuid.UUID(text))
            except ValueError:
                continue
    if not ids:
        return {}
    rows = await session.execute(select(User.id, User.full_name).where(User.id.in_(ids)))
    return {f"user:{user_id}": name for user_id, name in rows}


@router.get("/web/register/{entry_id:uuid}")
async def entry_page(
    entry_id: uuid.UUID,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    signed_in: SignedInDep,
) -> Response:
    admitted = await _admit(request, session, settings, signed_in)
    if isinstance(admitted, Response):
        return admitted
    entry = await _entry(session, request, settings, admitted, entry_id)
    if isinstance(entry, Response):
        return entry
    shown = await reads.read(session, request, admitted, entry)
    versions = await reads.history(session, request, admitted, entry)
    names = await _names(session, versions)
    notice = {
        "created": "The child is on the register.",
        "changed": "The change is saved.",
        "reviewed": "The review is recorded.",
        "ended": "The plan is ended.",
        "born": "The birth is recorded: the entry is now the child's.",
    }.get(request.query_params.get("done", ""))
    history = [
        {
            "version": version,
            "changes": changes,
            "who": names.get(version.changed_by, version.changed_by),
        }
        for version, changes in zip(versions, changes_in_words(versions), strict=True)
    ]
    return _page(
        request,
        settings,
        admitted,
        "register_entry.html",
        title=_title(shown),
        entry=shown,
        history=history,
        notice=notice,
    )


def _title(entry: EntryRead) -> str:
    if entry.child is not None:
        return f"{entry.child.given_name} {entry.child.family_name}"
    assert entry.mother is not None
    return f"Unborn baby of {entry.mother.given_name} {entry.mother.family_name}"


# --- putting a child on the register -----------------------------------------------------


def _entry_form(
    request: Request,
    settings: Settings,
    custodian: Principal,
    *,
    form: dict[str, Any],
    status_code: int = 200,
    **context: Any,
) -> Response:
    return _page(
        request,
        settings,
        custodian,
        "register_form.html",
        status_code=status_code,
        form=form,
        category_values=[category.value for category in Category],
        **context,
    )


@router.get("/web/register/new")
async def new_entry_page(
    request: Request, session: SessionDep, settings: SettingsDep, signed_in: SignedInDep
) -> Response:
    admitted = await _admit(request, session, settings, signed_in)
    if isinstance(admitted, Response):
        return admitted
    blank: dict[str, Any] = {**dict.fromkeys(ENTRY_FIELDS, ""), "categories": []}
    return _entry_form(
        request,
        settings,
        admitted,
        form=blank,
        title="Put a child on the register",
        action="/web/register/new",
        creating=True,
    )


@router.post("/web/register/new")
async def new_entry(
    request: Request, session: SessionDep, settings: SettingsDep, signed_in: SignedInDep
) -> Response:
    form, refused = await _posted(request, settings)
    if refused is not None:
        return refused
    admitted = await _admit(request, session, settings, signed_in)
    if isinstance(admitted, Response):
        return admitted
    typed = typed_values(form, ENTRY_FIELDS)
    errors: dict[str, str] = {}
    raw = entry_body(typed, errors)
    data = validated(EntryCreate, raw, errors, whole="child_given_name")
    summary: dict[str, Any] = {"title": "Check the details", "fields": errors}
    status = 422
    if data is not None and not errors:
        try:
            entry = await writes.create(session, request, admitted, data)
        except ProblemError as problem:
            errors, summary = refusal(problem, "child_given_name")
            status = problem.status
        else:
            return _redirect(f"/web/register/{entry.id}?done=created")
    return _entry_form(
        request,
        settings,
        admitted,
        form=typed,
        status_code=status,
        title="Put a child on the register",
        action="/web/register/new",
        creating=True,
        errors=errors,
        error=summary,
    )


def _redirect(to: str) -> Response:
    return RedirectResponse(to, status_code=303, headers=SECURITY_HEADERS)


# --- changing an entry -------------------------------------------------------------------


async def _current(
    session: AsyncSession,
    request: Request,
    settings: Settings,
    custodian: Principal,
    entry_id: uuid.UUID,
) -> tuple[RegisterEntry, EntryRead] | Response:
    """The entry a form is for, its read on record as the API's read is."""
    entry = await _entry(session, request, settings, custodian, entry_id)
    if isinstance(entry, Response):
        return entry
    return entry, await reads.read(session, request, custodian, entry)


def _ended(request: Request, settings: Settings, custodian: Principal) -> Response:
    return _message_page(
        request,
        settings,
        custodian,
        409,
        "This plan has ended",
        "An ended plan is never changed or reopened: put the child on the register again "
        "as a new entry if a new plan starts.",
    )


@router.get("/web/register/{entry_id:uuid}/change")
async def change_page(
    entry_id: uuid.UUID,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    signed_in: SignedInDep,
) -> Response:
    admitted = await _admit(request, session, settings, signed_in)
    if isinstance(admitted, Response):
        return admitted
    found = await _current(session, request, settings, admitted, entry_id)
    if isinstance(found, Response):
        return found
    _, shown = found
    if shown.status == "ended":
        return _ended(request, settings, admitted)
    return _change_form(request, settings, admitted, shown, form=form_of(shown))


def _change_form(
    request: Request,
    settings: Settings,
    custodian: Principal,
    shown: EntryRead,
    *,
    form: dict[str, Any],
    status_code: int = 200,
    **context: Any,
) -> Response:
    return _entry_form(
        request,
        settings,
        custodian,
        form=form,
        status_code=status_code,
        title=f"Change the entry: {_title(shown)}",
        action=f"/web/register/{shown.id}/change",
        entry=shown,
        version=shown.version,
        creating=False,
        **context,
    )


async def _locked(
    session: AsyncSession,
    request: Request,
    settings: Settings,
    custodian: Principal,
    entry_id: uuid.UUID,
    form: FormData,
) -> tuple[RegisterEntry, EntryRead | None] | Response:
    """The entry locked for a change, and None; or, when it is no longer at the version
    the form was loaded at, the entry as it is now (its read on record)."""
    entry = await _entry(session, request, settings, custodian, entry_id, for_change=True)
    if isinstance(entry, Response):
        return entry
    if version_of(form) != entry.version:
        return entry, await reads.read(session, request, custodian, entry)
    return entry, None


def _conflict(
    shown: EntryRead, clashes: dict[str, str] | None = None, *, merged: bool = False
) -> dict[str, Any]:
    if not merged:
        detail = (
            "Nothing was saved. The entry as it is now is shown below, and what you typed "
            "is kept in the form. Check it against the entry, then send it again."
        )
    else:
        detail = (
            "Nothing was saved. The entry as it is now is shown below; the form has their "
            "changes, and yours on top of them. Check it, then save again."
        )
    if clashes:
        detail += " You both changed the fields listed here: choose the right value in each."
    return {"title": CONFLICT, "detail": detail, "fields": clashes or {}}


@router.post("/web/register/{entry_id:uuid}/change")
async def change(
    entry_id: uuid.UUID,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    signed_in: SignedInDep,
) -> Response:
    form, refused = await _posted(request, settings)
    if refused is not None:
        return refused
    admitted = await _admit(request, session, settings, signed_in)
    if isinstance(admitted, Response):
        return admitted
    locked = await _locked(session, request, settings, admitted, entry_id, form)
    if isinstance(locked, Response):
        return locked
    entry, now = locked
    typed = typed_values(form, CHANGE_FIELDS)
    if now is not None:
        # Saving what was typed as it stands would put back, unseen, every field the
        # other person changed: the form for the new version takes their changes where
        # this one left a field as it was loaded, and says where both changed one.
        loaded_at = version_of(form)
        versions = await reads.history(session, request, admitted, entry)
        loaded = next((item.entry for item in versions if item.version == loaded_at), None)
        merged, clashes = merged_after_conflict(typed, loaded, now)
        return _change_form(
            request,
            settings,
            admitted,
            now,
            form=merged,
            status_code=409,
            errors=clashes,
            error=_conflict(now, in_form_order(clashes), merged=True),
            current=now,
        )
    shown = reads.current(entry)
    errors: dict[str, str] = {}
    raw = entry_body(typed, errors)
    errors.pop("last_review", None)
    body: dict[str, Any] = {key: raw[key] for key in raw if key != "last_review"}
    body["reason"] = typed["reason"] or None
    if entry.unborn:
        body.pop("child")
    else:
        body.pop("expected_delivery_date")
    summary: dict[str, Any] = {"title": "Check the details", "fields": errors}
    status = 422
    whole = "mother_given_name" if entry.unborn else "child_given_name"
    data = validated(EntryChange, body, errors, whole=whole)
    if data is not None and not errors:
        try:
            await writes.change(session, request, admitted, entry, data)
        except ProblemError as problem:
            errors, summary = refusal(problem, whole)
            status = problem.status
        else:
            return _redirect(f"/web/register/{entry.id}?done=changed")
    await session.rollback()  # the lock is not held while the custodian corrects the form
    return _change_form(
        request,
        settings,
        admitted,
        shown,
        form=typed,
        status_code=status,
        errors=errors,
        error=summary,
    )


# --- review, end, birth ------------------------------------------------------------------

STEPS: dict[str, dict[str, Any]] = {
    "review": {
        "title": "Record a review conference",
        "fields": ("held_on", "next_review", "note"),
        "button": "Record the review",
        "done": "reviewed",
    },
    "end": {
        "title": "End the plan",
        "fields": ("end_reason", "ended_on", "note"),
        "button": "End the plan",
        "done": "ended",
    },
    "birth": {
        "title": "Record the birth",
        "fields": (*(f"child_{field}" for field in PERSON_FIELDS), "note"),
        "button": "Record the birth",
        "done": "born",
    },
}


def _step_form(
    request: Request,
    settings: Settings,
    custodian: Principal,
    step: str,
    shown: EntryRead,
    *,
    form: dict[str, Any],
    status_code: int = 200,
    **context: Any,
) -> Response:
    return _page(
        request,
        settings,
        custodian,
        "register_step.html",
        status_code=status_code,
        title=f"{STEPS[step]['title']}: {_title(shown)}",
        step=step,
        button=STEPS[step]["button"],
        action=f"/web/register/{shown.id}/{step}",
        entry=shown,
        version=shown.version,
        form=form,
        **context,
    )


async def _write_step(
    step: str,
    session: AsyncSession,
    request: Request,
    custodian: Principal,
    entry: RegisterEntry,
    body: BaseModel,
) -> None:
    if step == "review":
        assert isinstance(body, ReviewRecord)
        await writes.review(session, request, custodian, entry, body)
    elif step == "end":
        assert isinstance(body, EntryEnd)
        await writes.end(session, request, custodian, entry, body)
    else:
        assert isinstance(body, BirthRecord)
        await writes.birth(session, request, custodian, entry, body)


def _step_allowed(step: str, shown: EntryRead) -> bool:
    return shown.status == "active" and (step != "birth" or shown.unborn)


async def _step_page(
    step: str,
    entry_id: uuid.UUID,
    request: Request,
    session: AsyncSession,
    settings: Settings,
    signed_in: Any,
) -> Response:
    admitted = await _admit(request, session, settings, signed_in)
    if isinstance(admitted, Response):
        return admitted
    found = await _current(session, request, settings, admitted, entry_id)
    if isinstance(found, Response):
        return found
    _, shown = found
    if shown.status == "ended":
        return _ended(request, settings, admitted)
    if not _step_allowed(step, shown):
        return _message_page(
            request,
            settings,
            admitted,
            409,
            "This child is already born",
            "The entry is already the child's: there is no birth to record.",
        )
    blank: dict[str, Any] = dict.fromkeys(STEPS[step]["fields"], "")
    return _step_form(request, settings, admitted, step, shown, form=blank)


async def _step(
    step: str,
    entry_id: uuid.UUID,
    request: Request,
    session: AsyncSession,
    settings: Settings,
    signed_in: Any,
) -> Response:
    form, refused = await _posted(request, settings)
    if refused is not None:
        return refused
    admitted = await _admit(request, session, settings, signed_in)
    if isinstance(admitted, Response):
        return admitted
    locked = await _locked(session, request, settings, admitted, entry_id, form)
    if isinstance(locked, Response):
        return locked
    entry, now = locked
    typed = typed_values(form, STEPS[step]["fields"])
    if now is not None:
        return _step_form(
            request,
            settings,
            admitted,
            step,
            now,
            form=typed,
            status_code=409,
            error=_conflict(now),
            current=now,
        )
    shown = reads.current(entry)
    errors: dict[str, str] = {}
    body = step_body(step, typed, errors)
    summary: dict[str, Any] = {"title": "Check the details", "fields": errors}
    status = 422
    if body is not None and not errors:
        try:
            await _write_step(step, session, request, admitted, entry, body)
        except ProblemError as problem:
            whole = "child_given_name" if step == "birth" else STEPS[step]["fields"][0]
            errors, summary = refusal(problem, whole)
            if "reason" in errors:
                errors["end_reason"] = errors.pop("reason")
            status = problem.status
        else:
            return _redirect(f"/web/register/{entry.id}?done={STEPS[step]['done']}")
    await session.rollback()
    return _step_form(
        request,
        settings,
        admitted,
        step,
        shown,
        form=typed,
        status_code=status,
        errors=errors,
        error=summary,
    )


@router.get("/web/register/{entry_id:uuid}/review")
async def review_page(
    entry_id: uuid.UUID,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    signed_in: SignedInDep,
) -> Response:
    return await _step_page("review", entry_id, request, session, settings, signed_in)


@router.post("/web/register/{entry_id:uuid}/review")
async def review(
    entry_id: uuid.UUID,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    signed_in: SignedInDep,
) -> Response:
    return await _step("review", entry_id, request, session, settings, signed_in)


@router.get("/web/register/{entry_id:uuid}/end")
async def end_page(
    entry_id: uuid.UUID,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    signed_in: SignedInDep,
) -> Response:
    return await _step_page("end", entry_id, request, session, settings, signed_in)


@router.post("/web/register/{entry_id:uuid}/end")
async def end(
    entry_id: uuid.UUID,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    signed_in: SignedInDep,
) -> Response:
    return await _step("end", entry_id, request, session, settings, signed_in)


@router.get("/web/register/{entry_id:uuid}/birth")
async def birth_page(
    entry_id: uuid.UUID,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    signed_in: SignedInDep,
) -> Response:
    return await _step_page("birth", entry_id, request, session, settings, signed_in)


@router.post("/web/register/{entry_id:uuid}/birth")
async def birth(
    entry_id: uuid.UUID,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    signed_in: SignedInDep,
) -> Response:
    return await _step("birth", entry_id, request, session, settings, signed_in)


# --- export and import -------------------------------------------------------------------


@router.post("/web/register/export")
async def export(
    request: Request, session: SessionDep, settings: SettingsDep, signed_in: SignedInDep
) -> Response:
    """The continuity export (the API's POST /v1/register/exports), as a download."""
    _, refused = await _posted(request, settings)
    if refused is not None:
        return refused
    admitted = await _admit(request, session, settings, signed_in)
    if isinstance(admitted, Response):
        return admitted
    exported = await transfer.export_file(session, request, admitted)
    return StreamingResponse(
        exported.chunks,
        media_type="text/csv; charset=utf-8",
        headers={
            **SECURITY_HEADERS,
            "Content-Disposition": f'attachment; filename="{exported.filename}"',
        },
    )


@router.get("/web/register/import")
async def import_page(
    request: Request, session: SessionDep, settings: SettingsDep, signed_in: SignedInDep
) -> Response:
    admitted = await _admit(request, session, settings, signed_in)
    if isinstance(admitted, Response):
        return admitted
    return _page(
        request,
        settings,
        admitted,
        "register_import.html",
        title="Import a file of entries",
        columns=IMPORT_COLUMNS,
    )


@router.post("/web/register/import")
async def import_entries(
    request: Request, session: SessionDep, settings: SettingsDep, signed_in: SignedInDep
) -> Response:
    """The CSV import (the API's POST /v1/register/imports): all rows or none, and on
    refusal every problem of every row, by row and column."""
    form, refused = await _posted(request, settings)
    try:
        return refused or await _import(request, session, settings, signed_in, form)
    finally:
        await form.close()  # the uploaded file's spooled copy


async def _import(
    request: Request, session: AsyncSession, settings: Settings, signed_in: Any, form: FormData
) -> Response:
    admitted = await _admit(request, session, settings, signed_in)
    if isinstance(admitted, Response):
        return admitted
    upload = form.get("file")
    context: dict[str, Any] = {"title": "Import a file of entries", "columns": IMPORT_COLUMNS}
    if not isinstance(upload, UploadFile) or not upload.filename:
        errors = {"file": "Choose the CSV file to import."}
        return _page(
            request,
            settings,
            admitted,
            "register_import.html",
            status_code=422,
            errors=errors,
            error={"title": "Check the file", "fields": errors},
            **context,
        )
    body = await upload.read()
    try:
        result = await transfer.import_file(session, request, admitted, body)
    except ProblemError as problem:
        if problem.code != "invalid_rows":
            raise
        return _page(
            request,
            settings,
            admitted,
            "register_import.html",
            status_code=422,
            error={"title": "Nothing was imported", "detail": problem.detail},
            problems=problem.errors or [],
            **context,
        )
    return _page(
        request,
        settings,
        admitted,
        "register_import.html",
        notice=f"{plural(result.imported, 'entry')} imported. "
        f"File fingerprint (SHA-256): {result.sha256}.",
        result=result,
        **context,
    )
