"""Pages of the thin web client. Each page does what the API does, through the same
code: the sign-in is the password grant, the lookup is answer_enquiry, so every check and
every audit event is the API's. The custodian's review pages are app/web/review_routes.py."""

import json
import re
from typing import Any

import structlog
from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse
from sqlalchemy import update

from app.audit.models import AuditEvent
from app.audit.service import commit_or_fail_closed, request_context
from app.auth.certificates import presented_thumbprint
from app.auth.models import AccessToken
from app.auth.principals import Principal, authenticate
from app.auth.sign_in import SignInRefused, sign_in_user
from app.auth.tokens import verify_token
from app.config import Settings
from app.db import DATABASE_ERRORS, utcnow
from app.deps import KeyRingDep, SessionDep, SettingsDep
from app.errors import ProblemError
from app.lookup.purposes import offered
from app.lookup.service import answer_enquiry
from app.web.pages import (
    CATEGORIES,
    SECURITY_HEADERS,
    SIGN_IN_RETRY_AFTER,
    STATUSES,
    STYLESHEET,
    UNBORN,
    form_refused,
    render,
    resumed,
    to_sign_in,
    uk_date,
)
from app.web.session import (
    CSRF_FIELD,
    SignedInDep,
    check_form,
    end_session,
    foreign_origin,
    start_session,
)

SUBJECT_FIELDS = ("nhs_number", "given_name", "family_name", "date_of_birth")
LOOKUP_FIELDS = (*SUBJECT_FIELDS, "purpose", "reason")
FIELD_LABELS = {
    "nhs_number": "NHS number",
    "given_name": "Given name",
    "family_name": "Family name",
    "date_of_birth": "Date of birth",
    "purpose": "Purpose",
    "reason": "Reason",
}
# What to do, in plain words, when a field is refused (the API's message says why).
FIELD_HELP = {
    "nhs_number": "Enter the 10-digit NHS number exactly as written; the last digit is a check.",
    "given_name": "Enter the given name in full, as on the child's records.",
    "family_name": "Enter the family name in full, as on the child's records.",
    "date_of_birth": "Enter a real date of birth, not in the future.",
    "purpose": "Choose one of the purposes offered.",
    "reason": "Say why you are asking, in a few words.",
    "subject": "Enter the NHS number, or the given name, family name and date of birth.",
}
# Typed values carried through a sign-in when the session ended (hidden form fields).
CARRY_PREFIX = "carry_"
# Why a sign-in could not be recorded: the log or its database is unavailable.
_SIGN_IN_UNRECORDED: tuple[type[Exception], ...] = (ProblemError, *DATABASE_ERRORS)

router = APIRouter(include_in_schema=False)
log = structlog.get_logger()


@router.get("/")
async def home() -> Response:
    return RedirectResponse("/web/lookup", status_code=303)


@router.get("/web/static/app.css")
async def stylesheet() -> Response:
    return Response(STYLESHEET, media_type="text/css", headers={"Cache-Control": "max-age=3600"})


@router.get("/web/sign-in")
async def sign_in_page(request: Request, settings: SettingsDep) -> Response:
    notice = "You have signed out." if "signed-out" in request.query_params else None
    return render(request, settings, "sign_in.html", title="Sign in", username="", notice=notice)


def _carried(form: Any) -> dict[str, str]:
    """The lookup's typed values carried through a sign-in, in hidden fields only."""
    return {
        field: str(form.get(CARRY_PREFIX + field, "")).strip()
        for field in LOOKUP_FIELDS
        if form.get(CARRY_PREFIX + field)
    }


@router.post("/web/sign-in")
async def sign_in(
    request: Request, session: SessionDep, settings: SettingsDep, keyring: KeyRingDep
) -> Response:
    form = await request.form()
    if (refused := form_refused(request, settings, form.get(CSRF_FIELD))) is not None:
        return refused
    username, password = str(form.get("username", "")), str(form.get("password", ""))
    carry = _carried(form)
    try:
        result = await sign_in_user(request, session, settings, keyring, username, password)
    except _SIGN_IN_UNRECORDED as exc:
        # The sign-in could not be recorded (the log or its database is unavailable):
        # no session, and a page that says what to do instead of a JSON document.
        log.error("web_sign_in_unavailable", error_type=type(exc).__name__)
        return _sign_in_unavailable(request, settings, username, carry)
    if isinstance(result, SignInRefused):
        error = {"title": "Not signed in", "detail": result.description}
        status = 429 if result.status == 429 else 401
        return render(
            request,
            settings,
            "sign_in.html",
            status_code=status,
            title="Sign in",
            username=username,
            error=error,
            carry=carry,
        )
    scopes = set(result.scope.split())
    resume = resumed(form)
    if resume is not None and "register:manage" in scopes:
        # Back to the register form the session ended on: what was typed, ready to be
        # sent again as it was (its version still guards against a change meanwhile).
        to, fields = resume
        response = render(
            request,
            settings,
            "error.html",
            title="You are signed in again",
            message="Nothing was saved yet. Press Try again to send what you typed.",
            again=fields,
            action=to,
            retry=True,
            signed_in=True,
        )
    elif carry and "register:lookup" in scopes:
        # Back to the lookup the session ended on, with what was typed: the values came
        # in this very form, and go back out in the page, stored nowhere else.
        principal = await authenticate(request, session, settings, keyring, result.access_token)
        form_values = dict.fromkeys(LOOKUP_FIELDS, "") | carry
        response = _lookup_form(
            request,
            settings,
            principal,
            form=form_values,
            signed_in=True,
            notice="You are signed in again. Check what you typed, then press Look up.",
        )
    else:
        to = "/web/lookup" if "register:lookup" in scopes else "/web/enquiries"
        response = RedirectResponse(to, status_code=303, headers=SECURITY_HEADERS)
    start_session(response, result.access_token, result.expires_in, settings)
    return response


def _sign_in_unavailable(
    request: Request, settings: Settings, username: str, carry: dict[str, str]
) -> Response:
    """503: a sign-in that cannot be recorded is not made; say what to do instead (the
    base page names whom to call)."""
    detail = (
        "The service cannot record sign-ins just now, so it cannot sign you in. Try again shortly."
    )
    response = render(
        request,
        settings,
        "sign_in.html",
        status_code=503,
        title="Sign in",
        username=username,
        error={"title": "Service unavailable", "detail": detail},
        carry=carry,
    )
    response.headers["Retry-After"] = SIGN_IN_RETRY_AFTER
    return response


@router.post("/web/sign-out")
async def sign_out(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    keyring: KeyRingDep,
    signed_in: SignedInDep,
) -> Response:
    """Ends the session for good: the token is revoked server-side (it would otherwise
    work on /web and as a bearer token until it expires), and that is on record."""
    form = await request.form()
    if (refused := form_refused(request, settings, form.get(CSRF_FIELD))) is not None:
        return refused
    if signed_in is not None:
        principal = signed_in.principal
        claims = await verify_token(
            keyring, settings, signed_in.token, certificate=presented_thumbprint(request, settings)
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
    response = RedirectResponse(
        "/web/sign-in?signed-out", status_code=303, headers=SECURITY_HEADERS
    )
    end_session(response, settings)
    return response


@router.get("/web/lookup")
async def lookup_page(request: Request, settings: SettingsDep, signed_in: SignedInDep) -> Response:
    if signed_in is None:
        return to_sign_in(settings)
    return _lookup_form(request, settings, signed_in.principal)


def _purposes(principal: Principal | None, settings: Settings) -> tuple[list[tuple[str, str]], str]:
    kind = principal.organisation_kind.value if principal is not None else ""
    return offered(kind, settings)


def _lookup_form(
    request: Request,
    settings: Settings,
    principal: Principal | None,
    *,
    status_code: int = 200,
    **context: Any,
) -> Response:
    """The lookup page. ``principal`` is None only on a form whose CSRF token had
    expired, where nobody is authenticated with: the page offers the form again."""
    purposes, own = _purposes(principal, settings)
    # Focus starts in the first field refused; else on the answer or the refusal, so
    # that it is what a screen reader reads first (WCAG 2.4.3); else in the first field.
    refused = [
        "nhs_number" if field == "subject" else field
        for field in ("subject", *LOOKUP_FIELDS)
        if field in (context.get("field_errors") or {})
    ]
    first = "answer" if context.get("answer") else "error" if context.get("error") else None
    context.setdefault("focus", refused[0] if refused else first or "nhs_number")
    form = context.pop("form", None) or dict.fromkeys(LOOKUP_FIELDS, "")
    if not form.get("purpose"):
        form = form | {"purpose": own}
    return render(
        request,
        settings,
        "lookup.html",
        status_code=status_code,
        principal=principal,  # a custodian who comes here keeps the way back to their pages
        title="Is this child on a plan?",
        who=principal.display_name if principal is not None else None,
        form=form,
        purposes=purposes,
        statuses=STATUSES,
        categories=CATEGORIES,
        unborn_words=UNBORN,
        labels=FIELD_LABELS,
        **context,
    )


def _enquiry(form: dict[str, str]) -> bytes:
    """The API's JSON body from the form: empty fields are left out, not sent blank."""
    subject = {field: form[field] for field in SUBJECT_FIELDS if form[field]}
    body = {"subject": subject, "purpose": form["purpose"], "reason": form["reason"]}
    return json.dumps(body).encode()


def _field_errors(problem: ProblemError, form: dict[str, str]) -> dict[str, str]:
    """The refusal's errors by form field (a validation error's loc, or a refusal that is
    about one field), each in plain words: what is wrong, then what to enter."""
    if problem.code == "purpose_not_allowed":
        return {
            "purpose": "This purpose is not open to your organisation. " + FIELD_HELP["purpose"]
        }
    fields: dict[str, str] = {}
    for error in problem.errors or ():
        loc = [part for part in error.get("loc", ()) if part != "body"]
        field = next((part for part in reversed(loc) if part in LOOKUP_FIELDS), None)
        if field is None:
            field = "subject" if loc[:1] == ["subject"] else None
        if field is None or field in fields:
            continue
        why = str(error.get("msg", "")).removeprefix("Value error, ").strip()
        if error.get("type") == "missing" or not form.get(field):
            why = "This is needed"
        elif error.get("type") == "string_too_short":
            least = re.search(r"at least (\d+) character", why)
            why = f"Too short: at least {least[1]} characters" if least else "Too short"
        elif error.get("type") == "extra_forbidden" or not why:
            why = "This was not accepted"
        if field == "subject":  # the rule itself is the help: said once
            fields[field] = FIELD_HELP[field]
            continue
        fields[field] = f"{why[:1].upper()}{why[1:]}. {FIELD_HELP[field]}".replace("..", ".")
    return fields


def _typed(posted: Any) -> dict[str, str]:
    return {field: str(posted.get(field, "")).strip() for field in LOOKUP_FIELDS}


@router.post("/web/lookup")
async def lookup(request: Request, settings: SettingsDep, signed_in: SignedInDep) -> Response:
    posted = await request.form()
    form = _typed(posted)
    try:
        check_form(request, posted.get(CSRF_FIELD))
    except ProblemError as problem:
        if foreign_origin(request):
            return form_refused(request, settings, posted.get(CSRF_FIELD)) or to_sign_in(settings)
        # Our own form, left open too long (or its cookie cleared): nothing is looked up,
        # and the page offers it again with what was typed and a fresh token.
        expired = {"title": "This form has expired", "detail": "Please try again."}
        return _lookup_form(
            request, settings, None, status_code=problem.status, form=form, error=expired
        )
    if signed_in is None:
        # The session ended (15 minutes, or signed out elsewhere): sign in again, and
        # what was typed comes back in hidden fields of the sign-in form, nowhere else.
        minutes = settings.token_ttl_seconds // 60
        ended = render(
            request,
            settings,
            "sign_in.html",
            status_code=401,
            title="Sign in",
            username="",
            notice=(
                f"Your session ended after {minutes} minutes; sign in again. What you "
                "typed is kept."
            ),
            carry={field: value for field, value in form.items() if value},
            signed_in=False,
        )
        end_session(ended, settings)  # a token that no longer holds is not kept either
        return ended
    token, principal = signed_in.token, signed_in.principal
    try:
        answer = await answer_enquiry(request, token, _enquiry(form))
    except ProblemError as problem:
        field_errors = _field_errors(problem, form)
        error: dict[str, Any]
        if field_errors:
            error = {"title": "Check the details", "detail": None, "fields": field_errors}
        else:
            error = {"title": problem.title, "detail": problem.detail}
        response = _lookup_form(
            request,
            settings,
            principal,
            status_code=problem.status,
            form=form,
            error=error,
            field_errors=field_errors,
        )
        if problem.status in (429, 503) and problem.headers:
            retry = problem.headers.get("Retry-After")
            if retry:
                response.headers["Retry-After"] = retry
        return response
    # The identifiers the officer sent are shown beside the answer (they sent them), so
    # it is plain which child it is for; the form itself starts blank again.
    asked = [
        (FIELD_LABELS[field], uk_date(form[field]) if field == "date_of_birth" else form[field])
        for field in SUBJECT_FIELDS
        if form[field]
    ]
    blank = dict.fromkeys(LOOKUP_FIELDS, "") | {"purpose": form["purpose"]}
    return _lookup_form(request, settings, principal, form=blank, answer=answer, asked=asked)
