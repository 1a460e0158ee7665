"""The custodian's review pages: who asked about the authority's children, the alerts,
the notifications, the webhook and the audit log's verification.

Each page goes through the API's own services, so every check and every audit event is
the API's: the reviewer check is admit_reviewer (a refusal on record, as the API's),
the enquiries are app/audit/review.py's (each read itself on record), the alerts
app/audit/alerts.py's, the notifications and the webhook app/notifications/service.py's
and webhook_settings.py's, the log's check app/audit/verify.py's. A child's NHS number
only ever travels in a POST body, never in a URL.
"""

import re
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse, StreamingResponse
from pydantic import ValidationError

from app.audit.alerts import AlertKind, AlertQuery, alert_report
from app.audit.deps import admit_reviewer
from app.audit.review import (
    AuditEventPage,
    EnquiryExport,
    EnquiryListQuery,
    EnquirySearch,
    OrganisationContact,
    Outcome,
    children_named,
    enquiring_organisations,
    export_csv,
    list_page,
    search_page,
)
from app.audit.verify import Finding, newest_checkpoint, verify_served_log
from app.auth.principals import Principal
from app.config import Settings
from app.deps import SessionDep, SettingsDep
from app.errors import ProblemError
from app.lookup.schemas import Purpose
from app.notifications.service import (
    NotificationQuery,
    NotificationStatus,
    acknowledge_notification,
    notification_page,
)
from app.notifications.webhook_settings import (
    WebhookSet,
    delete_webhook,
    read_webhook,
    set_webhook,
)
from app.web.pages import (
    CATEGORIES,
    PURPOSE_WORDS,
    SECURITY_HEADERS,
    STATUSES,
    form_refused,
    render,
    to_sign_in,
    uk_date,
)
from app.web.session import CSRF_FIELD, SignedIn, SignedInDep

router = APIRouter(include_in_schema=False)

WEB_PAGE = 50  # enquiries or notifications a page, unless the custodian chooses
PAGE_SIZES = (25, 50, 100, 200)

# The enquiries' filters: the form's field, and the filter's field in EnquiryFilters.
FILTER_FIELDS = {
    "from": "from",
    "to": "to",
    "enquirer": "enquirer_id",
    "organisation": "organisation_id",
    "purpose": "purpose",
    "outcome": "outcome",
    "entry": "entry_id",
}
FORM_OF = {model: form for form, model in FILTER_FIELDS.items()} | {
    "cursor": "cursor",
    "limit": "limit",
    "nhs_number": "nhs_number",
}
LABELS = {
    "from": "From",
    "to": "To",
    "enquirer": "Enquirer id",
    "organisation": "Organisation",
    "purpose": "Purpose",
    "outcome": "Answer",
    "entry": "Register entry",
    "cursor": "Page",
    "limit": "Enquiries a page",
    "nhs_number": "NHS number",
    "url": "Webhook address",
}
# What to enter, when a field is refused (the service's message says why).
FIELD_HELP = {
    "from": "Enter a date, such as 01/12/2026.",
    "to": "Enter a date on or after the start date.",
    "enquirer": "Enter the enquirer id as the enquiring system gave it.",
    "organisation": "Choose one of the organisations offered.",
    "purpose": "Choose one of the purposes offered.",
    "outcome": "Choose one of the answers offered.",
    "entry": "Open the page again from the register entry.",
    "cursor": "Start again from the first page.",
    "limit": "Choose one of the sizes offered.",
    "nhs_number": "Enter the 10-digit NHS number exactly as written; the last digit is a check.",
    "url": "Enter the full address of your receiver, starting https://.",
}
OUTCOME_WORDS = {
    Outcome.on_plan.value: "Told: on a child protection plan",
    Outcome.not_on_plan.value: "Told: not on a child protection plan",
    Outcome.refer_to_custodian.value: "Told to call you before acting (details did not settle it)",
    Outcome.refused.value: "Refused: nothing was disclosed",
}
NOTIFICATION_SHOWN = {
    NotificationStatus.unacknowledged.value: "Not yet acknowledged",
    NotificationStatus.acknowledged.value: "Acknowledged",
    NotificationStatus.all.value: "All",
}

# Each alert in words: what it is, what to do about it, and whether the service's duty
# desk should also hear of it (misuse of the register, not only of your children).
ALERT_WORDS: dict[str, dict[str, Any]] = {
    AlertKind.repeat_presentation.value: {
        "title": "One of your children has been seen by several organisations",
        "todo": (
            "A child presenting at several places within days can be a child at risk. Read the "
            "enquiries about this child, tell the lead professional, and call the "
            "organisations below to hear what they saw."
        ),
        "desk": False,
    },
    AlertKind.not_found_spike.value: {
        "title": "Many lookups by one enquirer found no plan",
        "todo": (
            "Someone may be trying names or numbers until one is on a plan. Call the "
            "organisation's safeguarding contact below to ask who the enquirer is and why "
            "they looked these children up; if it cannot be explained, call the service's "
            "duty desk to have their access stopped."
        ),
        "desk": True,
    },
    AlertKind.client_probing.value: {
        "title": "Many lookups by one system or user found no plan",
        "todo": (
            "A system or a user may be trying names or numbers, under many enquirer ids. "
            "Call the organisation's safeguarding contact below; if it cannot be explained, "
            "call the service's duty desk to have the system's access stopped."
        ),
        "desk": True,
    },
    AlertKind.client_mismatch.value: {
        "title": "Lookups about your children gave details that disagree with your entries",
        "todo": (
            "Details that disagree with the entry are what guessing a child's names or date of "
            "birth looks like. Read the enquiries the organisation made, and call its "
            "safeguarding contact below; if it cannot be explained, call the service's duty "
            "desk."
        ),
        "desk": True,
    },
    AlertKind.volume_limit_client.value: {
        "title": "A system was stopped at its lookup limit",
        "todo": (
            "A system asked more often than it may: misused, or misconfigured. Call the "
            "organisation's safeguarding contact below, and the service's duty desk."
        ),
        "desk": True,
    },
    AlertKind.volume_limit_enquirer.value: {
        "title": "An enquirer was stopped at their lookup limit",
        "todo": (
            "One person asked more often than anyone should need to. Call the organisation's "
            "safeguarding contact below to ask why, and the service's duty desk if it cannot "
            "be explained."
        ),
        "desk": True,
    },
    AlertKind.purpose_not_allowed.value: {
        "title": "Lookups gave a purpose their organisation may not give",
        "todo": (
            "An organisation asked for a reason it is not allowed to. Call its safeguarding "
            "contact below to ask why; tell the service's duty desk if it goes on."
        ),
        "desk": True,
    },
}
# What the log's check found, in words (app/audit/verify.py's kinds).
FINDING_WORDS = {
    "altered": "An event was changed after it was recorded.",
    "removed": "Events were deleted from the log.",
    "reordered": "Events were inserted into the log, or moved.",
    "rewritten": "The log no longer matches a signed checkpoint: its history was rewritten.",
    "truncated": "Events were removed from the end of the log.",
    "unsealed": "Events are waiting too long to be sealed: the sealing process has stopped.",
    "future_dated": "An event is dated in the future.",
    "forged_checkpoint": "A checkpoint's signature does not verify: it is forged.",
    "retired_key": "A checkpoint was signed with a key after that key was retired.",
    "verifier_keys_unreadable": "The list of checkpoint keys could not be read again.",
}


def _words() -> dict[str, Any]:
    return {
        "when": uk_date,
        "categories": CATEGORIES,
        "purpose_words": PURPOSE_WORDS,
        "outcome_words": OUTCOME_WORDS,
        "statuses": STATUSES,
        "labels": LABELS,
    }


def _page(
    request: Request,
    settings: Settings,
    principal: Principal,
    template: str,
    *,
    status_code: int = 200,
    **context: Any,
) -> Response:
    return render(
        request,
        settings,
        template,
        status_code=status_code,
        principal=principal,
        who=principal.display_name,
        **_words(),
        **context,
    )


async def _reviewer(
    request: Request, session: SessionDep, settings: Settings, signed_in: SignedIn | None
) -> Principal | Response:
    """The custodian signed in, or the page to answer instead: sign in, or a 403 that
    says whom to call (the refusal on record, as the API's: admit_reviewer)."""
    if signed_in is None:
        return to_sign_in(settings)
    principal = signed_in.principal
    try:
        return await admit_reviewer(request, principal, session)
    except ProblemError as problem:
        if problem.status != 403:
            raise
        return render(
            request,
            settings,
            "refused.html",
            status_code=403,
            principal=principal,
            title="Only custodians can open this page",
            detail=problem.detail,
        )


def _field_errors(
    exc: ValidationError, form_of: Mapping[str, str], dates: str = "date"
) -> dict[str, str]:
    """The validation's errors by form field, each in plain words: what is wrong, then
    what to enter (``dates``: what the period's fields hold)."""
    fields: dict[str, str] = {}
    for error in exc.errors():
        loc = [str(part) for part in error.get("loc", ())]
        field = next((form_of[part] for part in reversed(loc) if part in form_of), None)
        if field is None:
            # The period's own check (from before to) is about the end of it.
            field = "to" if "'from'" in str(error.get("msg", "")) else next(iter(form_of.values()))
        if field in fields:
            continue
        why = str(error.get("msg", "")).removeprefix("Value error, ").strip() or "Not accepted"
        if "'from' must be before 'to'" in why:
            why = "The end must be after the start"
        elif field in ("from", "to") and error.get("type") != "value_error":
            why = f"This is not a real {dates}"
        help_words = FIELD_HELP.get(field, "")
        fields[field] = f"{why[:1].upper()}{why[1:]}. {help_words}".replace("..", ".").strip()
    return fields


def _entry_ids(items: Iterable[Any]) -> set[uuid.UUID]:
    """The entries each enquiry (or notification) disclosed or matched."""
    ids = {entry for item in items for entry in item.matched_entry_ids}
    return ids | {item.entry_id for item in items if item.entry_id is not None}


def _children(items: Iterable[Any], named: Mapping[uuid.UUID, str]) -> dict[uuid.UUID, list[str]]:
    """By item: the reviewer's children it concerns, named (the disclosed entry first)."""
    about = {}
    for item in items:
        ids = [item.entry_id] if item.entry_id is not None else []
        ids += [entry for entry in item.matched_entry_ids if entry != item.entry_id]
        about[item.id] = [named[entry] for entry in ids if entry in named]
    return about


def _refused_fields(fields: dict[str, str]) -> dict[str, Any]:
    return {"title": "Check the details", "detail": None, "fields": fields}


# --- the enquiries -----------------------------------------------------------------------


def _typed_filters(source: Mapping[str, Any]) -> dict[str, str]:
    """The filters as typed (GET query or POST form), for the forms to show again."""
    typed = {field: str(source.get(field, "")).strip() for field in FILTER_FIELDS}
    typed["limit"] = str(source.get("limit", "")).strip()
    return typed


def _day(text: str, *, end: bool) -> str:
    """A form's date as the filter's instant: the day's start (``to``: the next day's,
    the filter's end being exclusive), in UTC. Anything else goes on as typed, for the
    filter to refuse."""
    try:
        day = date.fromisoformat(text)
    except ValueError:
        return text
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return (start + timedelta(days=1) if end else start).isoformat()


def _filters(typed: Mapping[str, str], *, paged: bool = True) -> dict[str, Any]:
    """The filters' fields for EnquiryFilters (and its page), from the typed form."""
    values: dict[str, Any] = {}
    for form_field, model_field in FILTER_FIELDS.items():
        value = typed.get(form_field, "")
        if not value:
            continue
        if form_field in ("from", "to"):
            value = _day(value, end=form_field == "to")
        values[model_field] = value
    if paged:
        values["limit"] = typed.get("limit") or WEB_PAGE
    return values


def _sizes(typed: Mapping[str, str]) -> list[int]:
    chosen = typed.get("limit", "")
    sizes = list(PAGE_SIZES)
    if chosen.isdigit() and int(chosen) not in sizes:
        sizes = sorted({*sizes, int(chosen)})
    return sizes


async def _enquiries(
    request: Request,
    session: SessionDep,
    settings: Settings,
    reviewer: Principal,
    typed: dict[str, str],
    *,
    page: AuditEventPage | None,
    nhs_number: str = "",
    status_code: int = 200,
    **context: Any,
) -> Response:
    organisations = await enquiring_organisations(session)
    named: dict[uuid.UUID, str] = {}
    if page is not None:
        named = await children_named(session, reviewer, _entry_ids(page.items))
    if typed.get("entry"):
        try:
            entry = uuid.UUID(typed["entry"])
        except ValueError:
            pass
        else:
            named |= await children_named(session, reviewer, {entry})
            context.setdefault("about_entry", named.get(entry))
    if not typed.get("limit"):
        typed = typed | {"limit": str(WEB_PAGE)}
    kept = [(field, typed[field]) for field in (*FILTER_FIELDS, "limit") if typed.get(field)]
    older = None
    if page is not None and page.next_cursor and not nhs_number:
        older = "/web/enquiries?" + urlencode([*kept, ("cursor", page.next_cursor)])
    return _page(
        request,
        settings,
        reviewer,
        "enquiries.html",
        status_code=status_code,
        title="Enquiries about your children",
        page=page,
        typed=typed,
        nhs_number=nhs_number,
        searching=bool(nhs_number),
        children=_children(page.items if page else (), named),
        organisations=organisations,
        organisation_names={o.id: o.name for o in organisations},
        purposes=[(p.value, PURPOSE_WORDS[p.value]) for p in Purpose],
        outcomes=list(OUTCOME_WORDS.items()),
        sizes=_sizes(typed),
        kept=kept,
        kept_for_export=[(field, value) for field, value in kept if field != "limit"],
        older_href=older,
        first_href="/web/enquiries?" + urlencode(kept),
        **context,
    )


async def _refused_enquiries(
    request: Request,
    session: SessionDep,
    settings: Settings,
    reviewer: Principal,
    typed: dict[str, str],
    fields: dict[str, str],
    nhs_number: str = "",
) -> Response:
    error = _refused_fields(fields)
    if fields.pop("cursor", None) is not None:
        # No field to point at: the page asked for is the problem.
        error["detail"] = "That page of enquiries cannot be found. Start again from the newest."
    if fields.pop("entry", None) is not None:
        error["detail"] = "That register entry cannot be found. Open it again from the register."
    return await _enquiries(
        request,
        session,
        settings,
        reviewer,
        typed,
        page=None,
        nhs_number=nhs_number,
        status_code=422,
        error=error,
        field_errors=fields,
    )


async def _problem_page(
    request: Request,
    session: SessionDep,
    settings: Settings,
    reviewer: Principal,
    typed: dict[str, str],
    problem: ProblemError,
    nhs_number: str = "",
) -> Response:
    """A refusal the service made (a page no longer valid, say), said on the page; a
    fault (5xx) is the error page's (app/web/pages.py)."""
    if problem.status >= 500:
        raise problem
    return await _enquiries(
        request,
        session,
        settings,
        reviewer,
        typed,
        page=None,
        nhs_number=nhs_number,
        status_code=problem.status,
        error={"title": problem.title, "detail": problem.detail},
    )


@router.get("/web/audit")
async def audit_page(settings: SettingsDep, signed_in: SignedInDep) -> Response:
    """The review page's old address."""
    if signed_in is None:
        return to_sign_in(settings)
    return RedirectResponse("/web/enquiries", status_code=303, headers=SECURITY_HEADERS)


@router.get("/web/enquiries")
async def enquiries_page(
    request: Request, session: SessionDep, settings: SettingsDep, signed_in: SignedInDep
) -> Response:
    reviewer = await _reviewer(request, session, settings, signed_in)
    if isinstance(reviewer, Response):
        return reviewer
    params = request.query_params
    typed = _typed_filters(params)
    if "nhs_number" in params:
        # Never looked at: an NHS number is not a filter of a URL.
        fields = {"nhs_number": "An NHS number is never sent in a page's address. Use the search."}
        return await _refused_enquiries(request, session, settings, reviewer, typed, fields)
    try:
        query = EnquiryListQuery.model_validate(
            _filters(typed) | ({"cursor": params["cursor"]} if params.get("cursor") else {})
        )
    except ValidationError as exc:
        fields = _field_errors(exc, FORM_OF)
        return await _refused_enquiries(request, session, settings, reviewer, typed, fields)
    try:
        page = await list_page(session, request, reviewer, query)
    except ProblemError as problem:
        return await _problem_page(request, session, settings, reviewer, typed, problem)
    return await _enquiries(
        request, session, settings, reviewer, typed, page=page, cursor=query.cursor
    )


@router.post("/web/enquiries/search")
async def search_enquiries(
    request: Request, session: SessionDep, settings: SettingsDep, signed_in: SignedInDep
) -> Response:
    """Enquiries about one child, by NHS number: a POST, so the number stays out of URLs
    (as the API's POST /v1/audit/events/search)."""
    form = await request.form()
    if (refused := form_refused(request, settings, form.get(CSRF_FIELD))) is not None:
        return refused
    reviewer = await _reviewer(request, session, settings, signed_in)
    if isinstance(reviewer, Response):
        return reviewer
    typed = _typed_filters(form)
    nhs_number = str(form.get("nhs_number", "")).strip()
    if not nhs_number:
        fields = {"nhs_number": "This is needed. " + FIELD_HELP["nhs_number"]}
        return await _refused_enquiries(request, session, settings, reviewer, typed, fields)
    cursor = str(form.get("cursor", "")).strip()
    try:
        search = EnquirySearch.model_validate(
            _filters(typed) | {"nhs_number": nhs_number} | ({"cursor": cursor} if cursor else {})
        )
    except ValidationError as exc:
        fields = _field_errors(exc, FORM_OF)
        return await _refused_enquiries(
            request, session, settings, reviewer, typed, fields, nhs_number
        )
    try:
        page = await search_page(session, request, reviewer, search)
    except ProblemError as problem:
        return await _problem_page(request, session, settings, reviewer, typed, problem, nhs_number)
    return await _enquiries(
        request,
        session,
        settings,
        reviewer,
        typed,
        page=page,
        nhs_number=search.nhs_number or nhs_number,
        cursor=search.cursor,
    )


@router.post("/web/enquiries/export")
async def export_enquiries(
    request: Request, session: SessionDep, settings: SettingsDep, signed_in: SignedInDep
) -> Response:
    """The enquiries shown (the same filters, and the NHS number searched for) as CSV,
    through the API's export: on record (audit.exported) before its first byte leaves."""
    form = await request.form()
    if (refused := form_refused(request, settings, form.get(CSRF_FIELD))) is not None:
        return refused
    reviewer = await _reviewer(request, session, settings, signed_in)
    if isinstance(reviewer, Response):
        return reviewer
    typed = _typed_filters(form)
    nhs_number = str(form.get("nhs_number", "")).strip()
    try:
        export = EnquiryExport.model_validate(
            _filters(typed, paged=False) | ({"nhs_number": nhs_number} if nhs_number else {})
        )
    except ValidationError as exc:
        fields = _field_errors(exc, FORM_OF)
        return await _refused_enquiries(
            request, session, settings, reviewer, typed, fields, nhs_number
        )
    chunks, filename = await export_csv(session, request, reviewer, export)
    return StreamingResponse(
        chunks,
        media_type="text/csv; charset=utf-8",
        headers={**SECURITY_HEADERS, "Content-Disposition": f'attachment; filename="{filename}"'},
    )


# --- the alerts ----------------------------------------------------------------------------


def _instant(text: str) -> str:
    """A datetime-local field (YYYY-MM-DDTHH:MM, UTC) as the report's RFC 3339 time;
    anything else as typed, for the query to refuse."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return text
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.isoformat()


def _local(value: datetime) -> str:
    """An instant as a datetime-local field shows it (UTC)."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M")


@router.get("/web/alerts")
async def alerts_page(
    request: Request, session: SessionDep, settings: SettingsDep, signed_in: SignedInDep
) -> Response:
    reviewer = await _reviewer(request, session, settings, signed_in)
    if isinstance(reviewer, Response):
        return reviewer
    typed = {field: request.query_params.get(field, "").strip() for field in ("from", "to")}
    context: dict[str, Any] = {
        "title": "Alerts",
        "typed": typed,
        "desk_contact": {"name": settings.duty_contact_name, "phone": settings.duty_contact_phone},
        "alert_words": ALERT_WORDS,
    }
    try:
        query = AlertQuery.model_validate(
            {field: _instant(value) for field, value in typed.items() if value}
        )
    except ValidationError as exc:
        fields = _field_errors(exc, {"from": "from", "to": "to"}, "date and time")
        return _page(
            request,
            settings,
            reviewer,
            "alerts.html",
            status_code=422,
            report=None,
            error=_refused_fields(fields),
            field_errors=fields,
            **context,
        )
    try:
        report = await alert_report(session, settings, reviewer, query)
    except ProblemError as problem:
        if problem.status >= 500:
            raise
        fields = {"from": f"{problem.detail} Choose a start nearer the end."}
        return _page(
            request,
            settings,
            reviewer,
            "alerts.html",
            status_code=problem.status,
            report=None,
            error=_refused_fields(fields),
            field_errors=fields,
            **context,
        )
    organisations = {o.id: o for o in await enquiring_organisations(session)}
    entries = {alert.entry_id for alert in report.alerts if alert.entry_id is not None}
    context["typed"] = {"from": _local(report.period_from), "to": _local(report.period_to)}
    return _page(
        request,
        settings,
        reviewer,
        "alerts.html",
        report=report,
        contacts=organisations,
        named=await children_named(session, reviewer, entries),
        **context,
    )


# --- the notifications ---------------------------------------------------------------------


def _contacts(organisations: Iterable[OrganisationContact]) -> dict[uuid.UUID, Any]:
    return {organisation.id: organisation for organisation in organisations}


@router.get("/web/notifications")
async def notifications_page(
    request: Request, session: SessionDep, settings: SettingsDep, signed_in: SignedInDep
) -> Response:
    reviewer = await _reviewer(request, session, settings, signed_in)
    if isinstance(reviewer, Response):
        return reviewer
    params = request.query_params
    shown = params.get("status") or NotificationStatus.all.value
    notice = "Notification acknowledged." if params.get("done") == "acknowledged" else None
    context: dict[str, Any] = {
        "title": "Notifications",
        "shown": shown,
        "statuses_shown": NOTIFICATION_SHOWN,
        "notice": notice,
    }
    try:
        query = NotificationQuery.model_validate(
            {"status": shown, "limit": WEB_PAGE}
            | ({"cursor": params["cursor"]} if params.get("cursor") else {})
        )
    except ValidationError:
        error: dict[str, str | None] = {
            "title": "Check the details",
            "detail": "Choose which notifications to show.",
        }
        context["shown"] = NotificationStatus.all.value
        return _page(
            request,
            settings,
            reviewer,
            "notifications.html",
            status_code=422,
            page=None,
            error=error,
            **context,
        )
    try:
        page = await notification_page(session, reviewer, query)
    except ProblemError as problem:
        if problem.status >= 500:
            raise
        error = {"title": problem.title, "detail": problem.detail}
        return _page(
            request,
            settings,
            reviewer,
            "notifications.html",
            status_code=problem.status,
            page=None,
            error=error,
            **context,
        )
    named = await children_named(session, reviewer, _entry_ids(page.items))
    return _page(
        request,
        settings,
        reviewer,
        "notifications.html",
        page=page,
        cursor=query.cursor,
        children=_children(page.items, named),
        subject=reviewer.subject,
        contacts=_contacts(await enquiring_organisations(session)),
        **context,
    )


@router.post("/web/notifications/{notification_id}/acknowledge")
async def acknowledge(
    notification_id: str,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    signed_in: SignedInDep,
) -> Response:
    """The API's acknowledgement (on record, idempotent), then back to the list."""
    form = await request.form()
    if (refused := form_refused(request, settings, form.get(CSRF_FIELD))) is not None:
        return refused
    reviewer = await _reviewer(request, session, settings, signed_in)
    if isinstance(reviewer, Response):
        return reviewer
    try:
        await acknowledge_notification(session, request, reviewer, uuid.UUID(notification_id))
    except (ValueError, ProblemError) as exc:
        if isinstance(exc, ProblemError) and exc.status >= 500:
            raise
        return render(
            request,
            settings,
            "error.html",
            status_code=404,
            principal=reviewer,
            title="Notification not found",
            message="There is no such notification for your authority. Open the list again.",
        )
    shown = str(form.get("status", "")) or NotificationStatus.all.value
    to = "/web/notifications?done=acknowledged"
    if shown in NOTIFICATION_SHOWN and shown != NotificationStatus.all.value:
        to += f"&status={shown}"
    return RedirectResponse(to, status_code=303, headers=SECURITY_HEADERS)


# --- the webhook ---------------------------------------------------------------------------


async def _webhook(
    request: Request,
    session: SessionDep,
    settings: Settings,
    reviewer: Principal,
    *,
    status_code: int = 200,
    **context: Any,
) -> Response:
    try:
        current = await read_webhook(session, reviewer)
    except ProblemError as problem:
        if problem.status != 404:
            raise
        current = None
    context.setdefault("url", "")
    return _page(
        request,
        settings,
        reviewer,
        "webhook.html",
        status_code=status_code,
        title="Webhook",
        current=current,
        **context,
    )


@router.get("/web/webhook")
async def webhook_page(
    request: Request, session: SessionDep, settings: SettingsDep, signed_in: SignedInDep
) -> Response:
    reviewer = await _reviewer(request, session, settings, signed_in)
    if isinstance(reviewer, Response):
        return reviewer
    done = request.query_params.get("done")
    notice = {
        "removed": "The webhook is removed: notifications stay in the list, nothing is pushed.",
        "none": "There was no webhook to remove.",
    }.get(done or "")
    return await _webhook(request, session, settings, reviewer, notice=notice)


@router.post("/web/webhook")
async def webhook_set(
    request: Request, session: SessionDep, settings: SettingsDep, signed_in: SignedInDep
) -> Response:
    """The API's PUT: checked, stored and on record the same; the secret shown once."""
    form = await request.form()
    if (refused := form_refused(request, settings, form.get(CSRF_FIELD))) is not None:
        return refused
    reviewer = await _reviewer(request, session, settings, signed_in)
    if isinstance(reviewer, Response):
        return reviewer
    url = str(form.get("url", "")).strip()
    fields: dict[str, str] = {}
    try:
        created = await set_webhook(
            session, request, settings, reviewer, WebhookSet.model_validate({"url": url})
        )
    except ValidationError as exc:
        fields = _field_errors(exc, {"url": "url"})
    except ProblemError as problem:
        if problem.status >= 500:
            raise
        why = problem.detail or next(
            (str(error.get("msg", "")) for error in problem.errors or ()), "Not accepted"
        )
        if problem.code == "webhook_target_refused":
            # Whom to ask, by name and number: the operator is reached through the desk.
            why += (
                f"; ask the service's duty desk ({settings.duty_contact_name}, "
                f"{settings.duty_contact_phone})"
            )
        fields = {"url": f"{why[:1].upper()}{why[1:]}. {FIELD_HELP['url']}".replace("..", ".")}
    if fields:
        return await _webhook(
            request,
            session,
            settings,
            reviewer,
            status_code=422,
            url=url,
            error=_refused_fields(fields),
            field_errors=fields,
        )
    return await _webhook(
        request,
        session,
        settings,
        reviewer,
        created=created,
        notice="The webhook is set. Copy its signing secret now: it is shown only once.",
    )


@router.post("/web/webhook/delete")
async def webhook_delete(
    request: Request, session: SessionDep, settings: SettingsDep, signed_in: SignedInDep
) -> Response:
    form = await request.form()
    if (refused := form_refused(request, settings, form.get(CSRF_FIELD))) is not None:
        return refused
    reviewer = await _reviewer(request, session, settings, signed_in)
    if isinstance(reviewer, Response):
        return reviewer
    done = "removed"
    try:
        await delete_webhook(session, request, reviewer)
    except ProblemError as problem:
        if problem.status != 404:
            raise
        done = "none"
    return RedirectResponse(f"/web/webhook?done={done}", status_code=303, headers=SECURITY_HEADERS)


# --- the audit log -------------------------------------------------------------------------


@router.get("/web/log")
async def log_page(
    request: Request, session: SessionDep, settings: SettingsDep, signed_in: SignedInDep
) -> Response:
    """GET /v1/audit/verify's check, and the newest checkpoint, in words."""
    reviewer = await _reviewer(request, session, settings, signed_in)
    if isinstance(reviewer, Response):
        return reviewer
    desk = {"name": settings.duty_contact_name, "phone": settings.duty_contact_phone}
    verifier = request.app.state.checkpoint_verifier
    if verifier is None:
        error = {
            "title": "The log cannot be verified here",
            "detail": "This instance holds no key to verify checkpoints with. "
            f"Call {desk['name']} on {desk['phone']}.",
        }
        return _page(
            request,
            settings,
            reviewer,
            "log.html",
            status_code=503,
            title="Audit log",
            report=None,
            error=error,
        )
    report = await verify_served_log(session, request.app.state.sessionmaker, settings, verifier)
    checkpoint = await newest_checkpoint(session)
    waiting, queued = _waiting(report.findings)
    return _page(
        request,
        settings,
        reviewer,
        "log.html",
        title="Audit log",
        report=report,
        checkpoint=checkpoint,
        finding_words=FINDING_WORDS,
        desk_contact=desk,
        # Events only waiting for the worker are a delay, not an alteration: said once,
        # apart from what would be tampering.
        waiting=waiting,
        waiting_since=min(queued) if queued else None,
        altered=[finding for finding in report.findings if finding not in waiting],
    )


# app/audit/verify.py's words for an event still queued for sealing (its time in them).
_QUEUED = re.compile(r"^event queued at (\S+) and still not sealed")


def _waiting(findings: list[Finding]) -> tuple[list[Finding], list[datetime]]:
    """The findings that are events still queued for sealing, and when each was queued."""
    waiting, queued = [], []
    for finding in findings:
        found = _QUEUED.match(finding.detail) if finding.kind == "unsealed" else None
        if found is None:
            continue
        try:
            queued.append(datetime.fromisoformat(found[1]))
        except ValueError:
            continue
        waiting.append(finding)
    return waiting, queued
