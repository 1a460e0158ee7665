"""RFC 6749 token endpoint and the published key set.

The token endpoint answers errors in RFC 6749 §5.2 form (``{"error": ...}``),
as OAuth clients expect, rather than as problem documents; except 503 (the sign-in
could not be recorded, so no token is issued), which RFC 6749 has no code for and
which is a problem document with Retry-After, as everywhere else in the service.
"""

import base64
import binascii
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any
from urllib.parse import unquote

from fastapi import APIRouter, Form, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.admin.models import SCOPES_BY_KIND, Client, Organisation, OrganisationKind, User
from app.audit.models import AuditEvent
from app.audit.service import recent_events, record, request_context
from app.auth.hashing import verify_secret
from app.auth.keys import KeyRing
from app.auth.models import AccessToken
from app.auth.principals import KeyRingDep, SettingsDep
from app.auth.tokens import issue_token
from app.config import Settings
from app.db import SessionDep, utcnow
from app.errors import ProblemError

router = APIRouter(tags=["auth"])

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
_BASIC_CHALLENGE = {"WWW-Authenticate": 'Basic realm="cp-register"'}
_WRONG_PASSWORD = (400, "invalid_grant", "Wrong username or password.", None)


class TokenResponse(BaseModel):
    access_token: str
    token_type: str = "Bearer"  # noqa: S105  (not a secret)
    expires_in: int
    scope: str


class OAuthError(BaseModel):
    error: str
    error_description: str | None = None


class JWKS(BaseModel):
    keys: list[dict[str, Any]]


def _oauth_error(
    status: int, error: str, description: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"error": error, "error_description": description},
        status_code=status,
        headers={**NO_STORE, **(headers or {})},
    )


def _basic_credentials(request: Request) -> tuple[str, str] | None:
    scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        client_id, sep, secret = base64.b64decode(encoded, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return ("", "")
    # RFC 6749 §2.3.1: both parts are form-urlencoded before Basic encoding.
    return (unquote(client_id), unquote(secret)) if sep else ("", "")


@dataclass(frozen=True)
class _Account:
    """Who is signing in, found before the secret is checked."""

    login_key: str  # what failures are counted against: the principal, or the name tried
    subject: str | None
    secret_hash: str | None
    active: bool
    scopes: set[str]
    organisation: Organisation | None


async def _find_client(session: AsyncSession, client_id: str) -> _Account:
    row = (
        await session.execute(
            select(Client, Organisation)
            .join(Organisation, Client.organisation_id == Organisation.id)
            .where(Client.id == client_id)
        )
    ).first()
    if row is None:
        return _Account(f"login:client:{client_id[:64]}", None, None, False, set(), None)
    client, org = row
    subject = f"client:{client.id}"
    active = client.active and org.active
    return _Account(subject, subject, client.secret_hash, active, set(client.scopes), org)


async def _find_user(session: AsyncSession, username: str) -> _Account:
    row = (
        await session.execute(
            select(User, Organisation)
            .join(Organisation, User.organisation_id == Organisation.id)
            .where(User.username == username)
        )
    ).first()
    if row is None:
        return _Account(f"login:user:{username[:80]}", None, None, False, set(), None)
    user, org = row
    subject = f"user:{user.id}"
    return _Account(
        subject, subject, user.password_hash, user.active and org.active, set(user.scopes), org
    )


async def _locked_for(session: AsyncSession, settings: Settings, account: _Account) -> int:
    """Seconds until the next sign-in attempt is allowed (0: now).

    Failures since the last token issued (or within a day) count; past the
    threshold each further failure doubles the wait, up to the maximum.
    """
    now = utcnow()
    since = now - timedelta(days=1)
    if account.subject is not None:
        last_issued = await session.scalar(
            select(func.max(AccessToken.issued_at)).where(AccessToken.subject == account.subject)
        )
        if last_issued is not None:
            since = max(since, last_issued)
    failures, _, newest = await recent_events(
        session, principal=account.login_key, event_type="auth.login_failed", since=since
    )
    excess = failures - settings.login_failures_before_lockout
    if excess < 0 or newest is None:
        return 0
    wait = min(settings.login_lockout_base_seconds * 2**excess, settings.login_lockout_max_seconds)
    return max(0, math.ceil((newest + timedelta(seconds=wait) - now).total_seconds()))


@router.post(
    "/oauth/token",
    response_model=TokenResponse,
    responses={400: {"model": OAuthError}, 401: {"model": OAuthError}, 429: {"model": OAuthError}},
    summary="Issue an access token (client_credentials or password grant)",
)
async def token(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    keyring: KeyRingDep,
    grant_type: Annotated[str, Form()],
    scope: Annotated[str | None, Form()] = None,
    client_id: Annotated[str | None, Form()] = None,
    client_secret: Annotated[str | None, Form()] = None,
    username: Annotated[str | None, Form()] = None,
    password: Annotated[str | None, Form()] = None,
) -> Any:
    if grant_type == "client_credentials":
        basic = _basic_credentials(request)
        if basic is not None:
            client_id, client_secret = basic
        if not client_id or not client_secret:
            return _oauth_error(
                401, "invalid_client", "Client authentication failed.", _BASIC_CHALLENGE
            )
        account, secret, name = await _find_client(session, client_id), client_secret, client_id
        failure: tuple[int, str, str, dict[str, str] | None] = (
            401,
            "invalid_client",
            "Client authentication failed.",
            _BASIC_CHALLENGE,
        )
    elif grant_type == "password":
        if not username or not password:
            return _oauth_error(400, "invalid_request", "username and password are required.")
        account, secret, name = await _find_user(session, username), password, username
        failure = _WRONG_PASSWORD
    else:
        return _oauth_error(400, "unsupported_grant_type", "Use client_credentials or password.")

    result = await sign_in(
        request,
        session,
        settings,
        keyring,
        account=account,
        secret=secret,
        grant=Grant(grant_type, name, scope, failure),
    )
    if isinstance(result, SignInRefused):
        return _oauth_error(result.status, result.error, result.description, result.headers)
    return JSONResponse(result.model_dump(), headers=NO_STORE)


@dataclass(frozen=True)
class SignInRefused:
    status: int
    error: str  # RFC 6749 error code
    description: str
    headers: dict[str, str] | None = None


@dataclass(frozen=True)
class Grant:
    grant_type: str
    name: str  # the client id or username tried, for the audit event
    scope: str | None
    failure: tuple[int, str, str, dict[str, str] | None]  # the answer to a wrong secret


async def sign_in(
    request: Request,
    session: AsyncSession,
    settings: Settings,
    keyring: KeyRing,
    *,
    account: _Account,
    secret: str,
    grant: Grant,
) -> TokenResponse | SignInRefused:
    """Lock-out, the secret, the scopes, then a token recorded as issued. Every outcome is
    an audit event committed before the answer: failures, lock-outs, scopes refused, and
    the token issued (``auth.signed_in``, with its jti), so that no token leaves while the
    log cannot be written (503, ``sign_in_unavailable``). The token endpoint and the web
    client's sign-in share it."""
    event = AuditEvent(
        principal=account.login_key,
        outcome="refused",
        **request_context(request),
        detail={"grant_type": grant.grant_type, "name": grant.name[:100]},
    )
    locked_for = await _locked_for(session, settings, account)
    if locked_for:
        event.event_type, event.refusal = "auth.login_locked", "locked_out"
        await _record(session, event)
        return SignInRefused(
            429,
            "slow_down",
            "Too many failed attempts; try again later.",
            {"Retry-After": str(locked_for)},
        )
    await session.commit()  # release SQLite's write lock before the slow hash check
    if not (await verify_secret(secret, account.secret_hash) and account.active):
        event.event_type, event.refusal = "auth.login_failed", grant.failure[1]
        await _record(session, event)
        return SignInRefused(*grant.failure)
    assert account.subject is not None
    assert account.organisation is not None

    organisation = account.organisation
    grantable = account.scopes & SCOPES_BY_KIND[OrganisationKind(organisation.kind)]
    # From here the caller is identified: the event names the principal, not the name tried.
    event.principal, event.organisation_id = account.subject, organisation.id
    requested = set(grant.scope.split()) if grant.scope else None
    if requested is not None and not requested <= grantable:
        event.event_type, event.refusal = "auth.login_refused", "invalid_scope"
        event.detail = {**(event.detail or {}), "scopes_requested": _scope_names(requested)}
        await _record(session, event)
        return SignInRefused(400, "invalid_scope", "A requested scope is not granted to you.")
    scopes = sorted(requested if requested is not None else grantable)
    issued = await issue_token(
        keyring,
        settings,
        subject=account.subject,
        organisation_id=str(organisation.id),
        scopes=scopes,
    )
    session.add(
        AccessToken(
            jti=issued.token_id,
            subject=account.subject,
            expires_at=datetime.fromtimestamp(issued.expires_at, UTC),
        )
    )
    # The sign-in is on record, in the same transaction as the token's jti, before the
    # token leaves: if the log cannot be written, no token is issued (503).
    event.event_type, event.outcome = "auth.signed_in", "issued"
    event.detail = {**(event.detail or {}), "jti": issued.token_id, "scopes": scopes}
    await _record(session, event)
    return TokenResponse(
        access_token=issued.token, expires_in=settings.token_ttl_seconds, scope=" ".join(scopes)
    )


async def _record(session: AsyncSession, event: AuditEvent) -> None:
    """Commit the sign-in's event (and anything added with it), or refuse with 503."""
    try:
        await record(session, event)
    except ProblemError as unavailable:
        raise sign_in_unavailable() from unavailable


def _scope_names(requested: set[str]) -> list[str]:
    """The scopes asked for, as the event keeps them: the caller chose them, so bounded."""
    return sorted(name[:64] for name in requested)[:10]


def sign_in_unavailable() -> ProblemError:
    """The answer when a sign-in cannot be recorded: 503 and no token."""
    return ProblemError(
        503,
        "Service unavailable",
        "The sign-in could not be recorded, so no token was issued. Try again shortly.",
        headers={**NO_STORE, "Retry-After": "5"},
    )


async def sign_in_user(
    request: Request,
    session: AsyncSession,
    settings: Settings,
    keyring: KeyRing,
    username: str,
    password: str,
) -> TokenResponse | SignInRefused:
    """The password grant, for the web client's sign-in form."""
    return await sign_in(
        request,
        session,
        settings,
        keyring,
        account=await _find_user(session, username),
        secret=password,
        grant=Grant("password", username, None, _WRONG_PASSWORD),
    )


@router.get("/.well-known/jwks.json", response_model=JWKS, summary="Public signing keys")
async def jwks(keyring: KeyRingDep) -> JWKS:
    return JWKS(keys=await keyring.public_jwks())
