"""The browser's session and its CSRF token.

The session is the access token itself, in an HttpOnly, SameSite=Strict cookie
scoped to /web: the API never reads cookies, so a cookie can never authorise an
API call, and the page cannot read it. Every form carries a random token that must
equal the one in a second cookie (double submit); a POST whose Origin is another
site's is refused before anything is read.
"""

import hmac
import secrets

from fastapi import Request, Response

from app.config import Environment, Settings
from app.errors import ProblemError

SESSION_COOKIE = "cpr_session"
CSRF_COOKIE = "cpr_csrf"
CSRF_FIELD = "csrf_token"
COOKIE_PATH = "/web"


def _secure(settings: Settings) -> bool:
    # Plain http only on a developer's or the test suite's loopback.
    return settings.environment is Environment.production


def csrf_token(request: Request) -> str:
    """The browser's CSRF token, or a new one (set with remember_csrf)."""
    return request.cookies.get(CSRF_COOKIE) or secrets.token_urlsafe(32)


def remember_csrf(response: Response, token: str, settings: Settings) -> None:
    response.set_cookie(
        CSRF_COOKIE,
        token,
        httponly=True,
        samesite="strict",
        secure=_secure(settings),
        path=COOKIE_PATH,
    )


def check_form(request: Request, form_token: object) -> None:
    """403 unless the form came from our own pages."""
    origin = request.headers.get("origin")
    own = f"{request.url.scheme}://{request.url.netloc}"
    if origin is not None and origin != own:
        raise ProblemError(
            403, "Forbidden", "This form was sent from another site.", code="form_refused"
        )
    cookie = request.cookies.get(CSRF_COOKIE)
    if not cookie or not isinstance(form_token, str) or not hmac.compare_digest(cookie, form_token):
        raise ProblemError(
            403, "Forbidden", "This form has expired: open the page again.", code="form_refused"
        )


def start_session(response: Response, token: str, lifetime: int, settings: Settings) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=lifetime,
        httponly=True,
        samesite="strict",
        secure=_secure(settings),
        path=COOKIE_PATH,
    )


def end_session(response: Response, settings: Settings) -> None:
    response.delete_cookie(
        SESSION_COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict", secure=_secure(settings)
    )
