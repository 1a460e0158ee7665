"""Pages of the thin web client. Each page does what the API does, through the same
code: the sign-in is the password grant, the lookup is answer_enquiry, the review
page is the review API's list, so every check and every audit event is the API's."""

import json
from pathlib import Path
from typing import Any

import structlog
from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse
from fastapi.templating import Jinja2Templates
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit.models import AuditEvent
from app.audit.review import EnquiryListQuery, list_enquiries
from app.audit.routes import admit_reviewer
from app.audit.service import commit_or_fail_closed, request_context
from app.auth.certificates import presented_thumbprint
from app.auth.keys import KeyRing
from app.auth.models import AccessToken
from app.auth.principals import KeyRingDep, Principal, SettingsDep, authenticate
from app.auth.routes import SignInRefused, sign_in_user
from app.auth.tokens import verify_token
from app.config import Settings
from app.db import DATABASE_ERRORS, SessionDep, utcnow
from app.errors import ProblemError
from app.lookup.routes import answer_enquiry
from app.lookup.schemas import Purpose
from app.web.session import (
    CSRF_FIELD,
    SESSION_COOKIE,
    check_form,
    csrf_token,
    end_session,
    remember_csrf,
    start_session,
)

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")
STYLESHEET = (HERE / "static" / "app.css").read_text()

# No script, no framing, no other origin: the pages need nothing else.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    # Not no-referrer: with it, browsers send "Origin: null" on our own forms, and the
    # origin check (app/web/session.py) could not tell them from a foreign site's.
    "Referrer-Policy": "same-origin",
    # Answers and enquiries must not linger in a shared browser's cache.
    "Cache-Control": "no-store",
}
STATUSES = {
    "on_plan": "On a child protection plan",
    "not_on_plan": "Not on a child protection plan",
    "refer_to_custodian": "Call the duty contact: the register cannot say from these details",
}
PURPOSES = [(purpose.value, purpose.value.replace("_", " ").capitalize()) for purpose in Purpose]
LOOKUP_FIELDS = ("nhs_number", "given_name", "family_name", "date_of_birth", "purpose", "reason")

SIGN_IN_RETRY_AFTER = "5"

router = APIRouter(include_in_schema=False)
log = structlog.get_logger()


def _page(
    request: Request,
    settings: Settings,
    template: str,
    *,
    status_code: int = 200,
    **context: Any,
) -> Response:
    csrf = csrf_token(request)
    response = templates.TemplateResponse(
        request,
        template,
        {"csrf": csrf, "signed_in": SESSION_COOKIE in request.cookies, **context},
        status_code=status_code,
        headers=SECURITY_HEADERS,
    )
    remember_csrf(response, csrf, settings)
    return response


def _form_refused(request: Request, settings: Settings, form_token: object) -> Response | None:
    """A page saying why, when the form did not come from our own pages (nothing in it
    is used); None when it did. The page carries a fresh form to start again from."""
    try:
        check_form(request, form_token)
    except ProblemError as problem:
        error = {"title": problem.title, "detail": problem.detail}
        return _page(
            request,
            settings,
            "sign_in.html",
            status_code=problem.status,
            title="Sign in",
            username="",
            error=error,
        )
    return None


def _to_sign_in(settings: Settings) -> Response:
    response = RedirectResponse("/web/sign-in", status_code=303, headers=SECURITY_HEADERS)
    end_session(response, settings)
    return response


async def _signed_in(
    request: Request, session: AsyncSession, settings: Settings, keyring: KeyRing
) -> tuple[str, Principal] | None:
    """The session's token and its principal; None without a session, or when the token
    no longer holds (expired, revoked, principal disabled: refused and audited as the
    API refuses it), which sends the browser back to sign in."""
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        return None
    try:
        return token, await authenticate(request, session, settings, keyring, token)
    except ProblemError:
        return None


@router.get("/")
async def home() -> Response:
    return RedirectResponse("/web/lookup", status_code=303)


@router.get("/web/static/app.css")
async def stylesheet() -> Response:
    return Response(STYLESHEET, media_type="text/css", headers={"Cache-Control": "max-age=3600"})


@router.get("/web/sign-in")
async def sign_in_page(request: Request, settings: SettingsDep) -> Response:
    return _page(request, settings, "sign_in.html", title="Sign in", username="")


@router.post("/web/sign-in")
async def sign_in(
    request: Request, session: SessionDep, settings: SettingsDep, keyring: KeyRingDep
) -> Response:
    form = await request.form()
    if (refused := _form_refused(request, settings, form.get(CSRF_FIELD))) is not None:
        return refused
    username, password = str(form.get("username", "")), str(form.get("password", ""))
    try:
        result = await sign_in_user(request, session, settings, keyring, username, password)
    except (ProblemError, *DATABASE_ERRORS) as exc:
        # The sign-in could not be recorded (the log or its database is unavailable):
        # no session, and a page that says what to do instead of a JSON document.
        log.error("web_sign_in_unavailable", error_type=type(exc).__name__)
        return _sign_in_unavailable(request, settings, username)
    if isinstance(result, SignInRefused):
        error = {"title": "Not signed in", "detail": result.description}
        status = 429 if result.status == 429 else 401
        return _page(
            request,
            settings,
            "sign_in.html",
            status_code=status,
            title="Sign in",
            username=username,
            error=error,
        )
    scopes = set(result.scope.split())
    to = "/web/lookup" if "register:lookup" in scopes else "/web/audit"
    response = RedirectResponse(to, status_code=303, headers=SECURITY_HEADERS)
    start_session(response, result.access_token, result.expires_in, settings)
    return response


def _sign_in_unavailable(request: Request, settings: Settings, username: str) -> Response:
    """503: a sign-in that cannot be recorded is not made; say what to do instead."""
    detail = (
        "The service cannot record sign-ins just now, so it cannot sign you in. Try again "
        f"shortly. If you need an answer now, call {settings.duty_contact_name} "
        f"on {settings.duty_contact_phone}."
    )
    response = _page(
        request,
        settings,
        "sign_in.html",
        status_code=503,
        title="Sign in",
        username=username,
        error={"title": "Service unavailable", "detail": detail},
    )
    response.headers["Retry-After"] = SIGN_IN_RETRY_AFTER
    return response


@router.post("/web/sign-out")
async def sign_out(
    request: Request, session: SessionDep, settings: SettingsDep, keyring: KeyRingDep
) -> Response:
    """Ends the session for good: the token is revoked server-side (it would otherwise
    work on /web and as a bearer token until it expires), and that is on record."""
    form = await request.form()
    if (refused := _form_refused(request, settings, form.get(CSRF_FIELD))) is not None:
        return refused
    signed_in = await _signed_in(request, session, settings, keyring)
    if signed_in is not None:
        token, principal = signed_in
        claims = await verify_token(
            keyring, settings, token, certificate=presented_thumbprint(request, settings)
        )
        await session.execute(
            update(AccessToken)
            .where(AccessToken.jti == claims.token_id, AccessToken.revoked_at.is_(None))
            .values(revoked_at=utcnow())
        )
        session.add(
            AuditEvent(
                event_type="auth.signed_out",
                principal=principal.subject,
                organisation_id=principal.organisation_id,
                outcome="revoked",
                detail={"jti": claims.token_id},
                **request_context(request),
            )
        )
        await commit_or_fail_closed(session)
    return _to_sign_in(settings)


@router.get("/web/lookup")
async def lookup_page(
    request: Request, session: SessionDep, settings: SettingsDep, keyring: KeyRingDep
) -> Response:
    signed_in = await _signed_in(request, session, settings, keyring)
    if signed_in is None:
        return _to_sign_in(settings)
    _, principal = signed_in
    return _lookup_form(request, settings, principal.display_name)


def _lookup_form(
    request: Request, settings: Settings, who: str, *, status_code: int = 200, **context: Any
) -> Response:
    form = context.pop("form", dict.fromkeys(LOOKUP_FIELDS, ""))
    return _page(
        request,
        settings,
        "lookup.html",
        status_code=status_code,
        title="Is this child on a plan?",
        who=who,
        form=form,
        purposes=PURPOSES,
        statuses=STATUSES,
        **context,
    )


def _enquiry(form: dict[str, str]) -> bytes:
    """The API's JSON body from the form: empty fields are left out, not sent blank."""
    subject = {
        field: form[field]
        for field in ("nhs_number", "given_name", "family_name", "date_of_birth")
        if form[field]
    }
    body = {"subject": subject, "purpose": form["purpose"], "reason": form["reason"]}
    return json.dumps(body).encode()


@router.post("/web/lookup")
async def lookup(
    request: Request, session: SessionDep, settings: SettingsDep, keyring: KeyRingDep
) -> Response:
    posted = await request.form()
    if (refused := _form_refused(request, settings, posted.get(CSRF_FIELD))) is not None:
        return refused
    signed_in = await _signed_in(request, session, settings, keyring)
    if signed_in is None:
        return _to_sign_in(settings)
    token, principal = signed_in
    form = {field: str(posted.get(field, "")).strip() for field in LOOKUP_FIELDS}
    try:
        answer = await answer_enquiry(request, token, _enquiry(form))
    except ProblemError as problem:
        error = {"title": problem.title, "detail": problem.detail, "errors": problem.errors}
        return _lookup_form(
            request,
            settings,
            principal.display_name,
            status_code=problem.status,
            form=form,
            error=error,
        )
    # The answer is shown; the identifiers are not shown back beside it.
    blank = dict.fromkeys(LOOKUP_FIELDS, "") | {"purpose": form["purpose"]}
    return _lookup_form(request, settings, principal.display_name, form=blank, answer=answer)


@router.get("/web/audit")
async def audit_page(
    request: Request, session: SessionDep, settings: SettingsDep, keyring: KeyRingDep
) -> Response:
    signed_in = await _signed_in(request, session, settings, keyring)
    if signed_in is None:
        return _to_sign_in(settings)
    _, principal = signed_in
    context: dict[str, Any] = {
        "title": "Enquiries about your children",
        "who": principal.display_name,
    }
    try:
        reviewer = await admit_reviewer(request, principal, session)
        page = await list_enquiries(request, reviewer, session, EnquiryListQuery())
    except ProblemError as problem:
        error = {"title": problem.title, "detail": problem.detail}
        return _page(
            request,
            settings,
            "audit.html",
            status_code=problem.status,
            page=None,
            error=error,
            **context,
        )
    return _page(request, settings, "audit.html", page=page, **context)
