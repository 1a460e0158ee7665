"""The browser's session and its CSRF token.

The session is the access token itself, in an HttpOnly, SameSite=Strict cookie
scoped to /web: the API never reads cookies, so a cookie can never authorise an
API call, and the page cannot read it. Every form carries a random token that must
equal the one in a second cookie (double submit); a POST whose Origin is another
site's is refused before anything is read.
"""

import hmac
import secrets
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request, Response

from app.auth.principals import Principal, authenticate
from app.config import Environment, Settings
from app.deps import KeyRingDep, SessionDep, SettingsDep
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


def foreign_origin(request: Request) -> bool:
    """True when the form was posted from another site's page (Origin says so)."""
    origin = request.headers.get("origin")
    return origin is not None and origin != f"{request.url.scheme}://{request.url.netloc}"


def check_form(request: Request, form_token: object) -> None:
    """403 unless the form came from our own pages."""
    if foreign_origin(request):
        raise ProblemError(
            403, "Forbidden", "This form was sent from another site.", code="form_refused"
        )
    cookie = request.cookies.get(CSRF_COOKIE)
    if not cookie or not isinstance(form_token, str) or not hmac.compare_digest(cookie, form_token):
        raise ProblemError(
            403, "Forbidden", "This form has expired; please try again.", code="form_refused"
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


@dataclass(frozen=True)
class SignedIn:
    """The browser's session: its access token, and the principal it names now."""

    token: str
    principal: Principal


async def get_signed_in(
    request: Request, session: SessionDep, settings: SettingsDep, keyring: KeyRingDep
) -> SignedIn | None:
    """Who is signed in, the pages' one way to know (tests/test_routes_authenticated.py
    finds it, or get_principal, under every route that is not listed as open). None
    without a session, or when its token no longer holds (expired, revoked, principal
    disabled: refused and audited as the API refuses it): the page sends the browser
    back to sign in.

    A form that did not come from our own pages is never authenticated with: the page
    refuses it (check_form, again) before it looks at who is signed in."""
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        return None
    if request.method == "POST":
        form = await request.form()  # read once: Starlette keeps it for the page
        try:
            check_form(request, form.get(CSRF_FIELD))
        except ProblemError:
            return None
    try:
        return SignedIn(token, await authenticate(request, session, settings, keyring, token))
    except ProblemError:
        return None


SignedInDep = Annotated[SignedIn | None, Depends(get_signed_in)]
