"""What every page of the web client shares: the templates, the security headers, the
words for statuses, categories and purposes, the form check, and the error pages. The
page modules (app/web/*routes.py) import this, never each other."""

import re
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import structlog
from fastapi import FastAPI, Request, Response
from fastapi.responses import RedirectResponse
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.auth.principals import Principal
from app.config import Settings
from app.db import DATABASE_ERRORS
from app.errors import ProblemError, allowed_methods
from app.lookup.purposes import PURPOSE_WORDS as PURPOSE_WORDS  # the page modules use it
from app.register.models import Category
from app.web.session import (
    CSRF_FIELD,
    SESSION_COOKIE,
    check_form,
    csrf_token,
    end_session,
    remember_csrf,
)

log = structlog.get_logger()


def uk_date(value: date | datetime | str | None) -> str:
    """A date as people here read it: DD/MM/YYYY, and HH:MM (UTC) for a time; an ISO
    date as the log keeps one (what an enquirer typed) likewise."""
    if value is None or value == "":
        return ""
    if isinstance(value, str):
        sent = value
        try:
            value = date.fromisoformat(sent)
        except ValueError:
            return sent  # not a date: shown as it was sent
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(UTC)
        return value.strftime("%d/%m/%Y %H:%M")
    return value.strftime("%d/%m/%Y")


# A web user's role as the log records it (app/identity/models.py's UserRole), in words;
# a system's member of staff's role is the system's own text and is shown as sent.
ROLE_WORDS = {
    "duty_officer": "duty officer",
    "custodian": "custodian",
    "operator": "service operator",
}


def role_words(role: str | None) -> str:
    return ROLE_WORDS.get(role or "", role or "")


# The custodian's pages, in the order of the navigation bar (base.html).
CUSTODIAN_NAV = (
    ("/web/register", "Register"),
    ("/web/enquiries", "Enquiries"),
    ("/web/alerts", "Alerts"),
    ("/web/notifications", "Notifications"),
    ("/web/webhook", "Webhook"),
    ("/web/log", "Audit log"),
)

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")
templates.env.filters["uk_date"] = uk_date
templates.env.filters["role_words"] = role_words
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
# Each answer in words, a symbol and a colour (the class), so that none of the three is
# the only signal. The symbol is decoration for sighted readers: the words say it all.
STATUSES = {
    "on_plan": {"symbol": "\u26a0", "words": "On a child protection plan"},
    "not_on_plan": {"symbol": "\u25cb", "words": "Not on a child protection plan"},
    "refer_to_custodian": {
        "symbol": "\u260e",
        "words": "Call before acting: the register cannot answer from these details",
    },
}
UNBORN = "Unborn baby: plan held against the person you asked about"
CATEGORIES = {
    category.value: category.value.replace("_", " ").capitalize() for category in Category
}

SIGN_IN_RETRY_AFTER = "5"


def render(
    request: Request,
    settings: Settings,
    template: str,
    *,
    status_code: int = 200,
    principal: Principal | None = None,
    **context: Any,
) -> Response:
    """The page, with the navigation of the signed-in ``principal`` (a custodian's pages)."""
    csrf = csrf_token(request)
    duty = {"name": settings.duty_contact_name, "phone": settings.duty_contact_phone}
    nav = CUSTODIAN_NAV if principal and principal.organisation_kind == "local_authority" else ()
    response = templates.TemplateResponse(
        request,
        template,
        {
            "csrf": csrf,
            "signed_in": SESSION_COOKIE in request.cookies,
            "duty": duty,
            "nav": nav,
            "here": request.url.path,
            **context,
        },
        status_code=status_code,
        headers=SECURITY_HEADERS,
    )
    remember_csrf(response, csrf, settings)
    return response


def form_refused(request: Request, settings: Settings, form_token: object) -> Response | None:
    """A page saying why, when the form did not come from our own pages (nothing in it
    is used); None when it did. The page carries a fresh form to start again from."""
    try:
        check_form(request, form_token)
    except ProblemError as problem:
        error = {"title": problem.title, "detail": problem.detail}
        return render(
            request,
            settings,
            "sign_in.html",
            status_code=problem.status,
            title="Sign in",
            username="",
            error=error,
        )
    return None


def to_sign_in(settings: Settings) -> Response:
    response = RedirectResponse("/web/sign-in", status_code=303, headers=SECURITY_HEADERS)
    end_session(response, settings)
    return response


# The /web pages' errors are pages, never the API's problem+json: what happened, in
# words, and whom to call (the API's own paths keep their problem documents).
ERROR_PAGES = {
    400: ("The form could not be read", "Open the page again and try once more."),
    403: ("This form has expired", "Please try again from the page it came from."),
    404: ("Page not found", "There is no page at this address."),
    405: ("This page cannot be used that way", "Open it from a link or a form of the service."),
    500: ("Something went wrong", "The service could not finish this. Try again shortly."),
    503: ("Service unavailable", "The service cannot answer just now. Try again shortly."),
}


def is_web(request: Request) -> bool:
    path = request.url.path
    return path == "/web" or path.startswith("/web/")


# Never sent back in a page: the password (and the form's token, which is made afresh).
NOT_CARRIED = frozenset({CSRF_FIELD, "password"})


async def typed_again(request: Request) -> list[tuple[str, str]] | None:
    """What a form of our own pages carried when the service could not answer it, to be
    sent again by *Try again* (hidden fields of a CSRF-protected form, as the sign-in
    page carries a lookup): nothing typed is lost to an outage. None for a GET, a form
    from elsewhere, or one with a file (a browser cannot be handed a file back)."""
    if request.method != "POST" or request.url.path in ("/web/sign-in", "/web/sign-out"):
        return None
    try:
        form = await request.form()
        check_form(request, form.get(CSRF_FIELD))
    except Exception:  # unreadable, or not our own form: nothing is carried
        return None
    fields = list(form.multi_items())
    if any(not isinstance(value, str) for _, value in fields):
        return None
    return [(name, str(value)) for name, value in fields if name not in NOT_CARRIED]


# The custodian's register forms a sign-in may send again (never the import: a file).
RESUMABLE = re.compile(
    r"/web/register/(new|search|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
    r"/(change|review|end|birth))"
)
RESUME_PREFIX = "resume_"


async def session_ended(request: Request, settings: Settings) -> Response:
    """A form of the custodian's register sent after the session ended: the sign-in page,
    carrying what was typed (hidden fields of its CSRF-protected form, as the lookup's
    are), to be sent again once signed in; else to the sign-in page as before."""
    fields = await typed_again(request) if RESUMABLE.fullmatch(request.url.path) else None
    if fields is None:
        return to_sign_in(settings)
    minutes = settings.token_ttl_seconds // 60
    response = render(
        request,
        settings,
        "sign_in.html",
        status_code=401,
        title="Sign in",
        username="",
        notice=(
            f"Your session has ended (a session lasts {minutes} minutes); sign in again. "
            "What you typed is kept, and nothing was saved yet."
        ),
        resume={"to": request.url.path, "fields": fields},
        signed_in=False,
    )
    end_session(response, settings)
    return response


def resumed(form: Any) -> tuple[str, list[tuple[str, str]]] | None:
    """The register form a sign-in carries, to send again: where, and what was typed."""
    to = str(form.get(RESUME_PREFIX + "to") or "")
    if not RESUMABLE.fullmatch(to):
        return None
    fields = [
        (name.removeprefix(RESUME_PREFIX), str(value))
        for name, value in form.multi_items()
        if name.startswith(RESUME_PREFIX) and name != RESUME_PREFIX + "to"
    ]
    return to, fields


def error_page(
    request: Request,
    status: int,
    detail: str | None = None,
    again: list[tuple[str, str]] | None = None,
) -> Response:
    settings: Settings = request.app.state.settings
    title, message = ERROR_PAGES.get(status, ERROR_PAGES[500 if status >= 500 else 400])
    response = render(
        request,
        settings,
        "error.html",
        status_code=status,
        title=title,
        message=detail or message,
        # A page the service could not give just now: offer it again (a GET is reloaded,
        # a form is sent again with what was typed).
        retry=status == 503,
        again=again,
        action=request.url.path,
    )
    if status == 405:
        response.headers["Allow"] = ", ".join(allowed_methods(request))
    if status == 503:
        response.headers["Retry-After"] = SIGN_IN_RETRY_AFTER
    return response


def install_error_pages(app: FastAPI) -> None:
    """Wrap the app's error handlers (app/errors.py) so that under /web they answer
    with a page; everywhere else the API's handler answers as before."""
    kinds: list[type[Exception]] = [
        StarletteHTTPException,
        ProblemError,
        *DATABASE_ERRORS,
        Exception,
    ]
    for kind in kinds:
        api_handler = app.exception_handlers.get(kind)
        if api_handler is None:
            continue

        async def handler(
            request: Request, exc: Exception, api_handler: Any = api_handler
        ) -> Response:
            if not is_web(request):
                return await api_handler(request, exc)
            if isinstance(exc, StarletteHTTPException):
                status = 404 if exc.status_code == 404 else exc.status_code
                return error_page(request, status if status in ERROR_PAGES else 400)
            if isinstance(exc, ProblemError):
                if exc.code == "form_refused":
                    return error_page(request, 403, exc.detail)
                again = await typed_again(request) if exc.status == 503 else None
                return error_page(request, exc.status, again=again)
            if isinstance(exc, DATABASE_ERRORS):
                log.error("database_unavailable", error_type=type(exc).__name__)
                return error_page(request, 503, again=await typed_again(request))
            log.error("unhandled_error", error_type=type(exc).__name__)
            return error_page(request, 500)

        app.add_exception_handler(kind, handler)
