"""RFC 6749 token endpoint and the published key set.

The token endpoint answers every refusal in RFC 6749 §5.2 form
(``{"error": ..., "error_description": ...}``, 400, 401, or 429 for a lockout), as
OAuth clients expect, a malformed request (a missing grant_type, a body that is not
a form) included; not as problem documents. The exceptions are what RFC 6749 has no
code for and the whole service answers alike, as problem documents: 413 (a body over
the limit, refused before it is read) and 503 (the sign-in could not be recorded, so
no token is issued; or the database is unavailable), with Retry-After.
"""

import base64
import binascii
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, unquote

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from app.admin.models import SCOPES_BY_KIND, Client, Organisation, OrganisationKind, User
from app.audit.models import AuditEvent
from app.audit.service import record, request_context
from app.auth import lockout
from app.auth.assertions import (
    ASSERTION_TYPE,
    AssertionRefused,
    unverified_client_id,
    verify_assertion,
)
from app.auth.certificates import presented_thumbprint
from app.auth.hashing import verify_secret
from app.auth.keys import KeyRing
from app.auth.models import AccessToken, UsedClientAssertion
from app.auth.principals import KeyRingDep, SettingsDep
from app.auth.tokens import issue_token
from app.config import Settings
from app.db import SessionDep
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
    public_jwks: dict[str, Any] | None = None  # a client's keys for private_key_jwt
    secret_allowed: bool = True


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
    return _Account(
        subject,
        subject,
        client.secret_hash,
        active,
        set(client.scopes),
        org,
        client.public_jwks,
        client.secret_allowed,
    )


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


FORM_MEDIA_TYPE = "application/x-www-form-urlencoded"
GRANT_TYPES = ("client_credentials", "password")
_MAX_PARAMETERS = 20
_PARAMETERS = (
    "grant_type",
    "scope",
    "client_id",
    "client_secret",
    "client_assertion_type",
    "client_assertion",
    "username",
    "password",
)
PRIVATE_KEY_JWT = "private_key_jwt"
_CLIENT_FAILURE: tuple[int, str, str, dict[str, str] | None] = (
    401,
    "invalid_client",
    "Client authentication failed.",
    None,
)


class TokenRequestInvalid(Exception):
    """The request is not one RFC 6749 §3.2 admits: answered ``invalid_request``."""


def _oauth_error_schema(*errors: str) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {"type": "string", "enum": list(errors)},
            "error_description": {"type": "string"},
        },
    }


def _oauth_error_response(description: str, *errors: str, **headers: str) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": f"RFC 6749 §5.2 error ({', '.join(errors)}). {description}",
        "content": {"application/json": {"schema": _oauth_error_schema(*errors)}},
    }
    if headers:
        response["headers"] = {
            name.replace("_", "-"): {"description": text, "schema": {"type": "string"}}
            for name, text in headers.items()
        }
    return response


_TOKEN_FORM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["grant_type"],
    "properties": {
        "grant_type": {"type": "string", "enum": list(GRANT_TYPES)},
        "scope": {"type": "string", "description": "Space-separated; default: all granted."},
        "client_id": {"type": "string", "description": "Or HTTP Basic (clientSecretBasic)."},
        "client_secret": {"type": "string"},
        "client_assertion_type": {
            "type": "string",
            "enum": [ASSERTION_TYPE],
            "description": "RFC 7523 private_key_jwt, instead of a secret.",
        },
        "client_assertion": {
            "type": "string",
            "description": "A JWT signed (RS256 or ES256) with the client's registered key.",
        },
        "username": {"type": "string", "description": "The password grant's user."},
        "password": {"type": "string", "format": "password"},
    },
}


@router.post(
    "/oauth/token",
    response_model=TokenResponse,
    responses={
        200: {"headers": {"Cache-Control": {"description": "no-store"}}},
        400: _oauth_error_response(
            "A malformed request (not form-encoded, a parameter twice, one missing), an "
            "unknown grant type, a wrong username or password, or a scope not granted.",
            "invalid_request",
            "unsupported_grant_type",
            "invalid_grant",
            "invalid_scope",
        ),
        401: _oauth_error_response(
            "The system client's id or secret is missing or wrong, or it is revoked; or "
            "its client assertion is not valid (bad signature, expired, wrong audience, "
            "replayed), or it is refused its secret.",
            "invalid_client",
            WWW_Authenticate='Basic realm="cp-register"',
        ),
        429: _oauth_error_response(
            "Locked out after failed attempts, or another sign-in of the account is in "
            "progress (app/auth/lockout.py).",
            "slow_down",
            Retry_After="Seconds to wait.",
        ),
    },
    summary="Issue an access token (client_credentials or password grant)",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {FORM_MEDIA_TYPE: {"schema": _TOKEN_FORM_SCHEMA}},
        },
        # Client authentication (RFC 6749 §2.3.1): HTTP Basic, or the form's parameters.
        "security": [{}, {"clientSecretBasic": []}],
    },
)
async def token(
    request: Request, session: SessionDep, settings: SettingsDep, keyring: KeyRingDep
) -> Any:
    # The form is read here, not by FastAPI: every failure, a missing grant_type
    # included, is an RFC 6749 §5.2 error, never a problem document (a 422).
    try:
        form = await _token_parameters(request)
    except TokenRequestInvalid as exc:
        return _oauth_error(400, "invalid_request", str(exc))
    grant_type, scope = form.get("grant_type"), form.get("scope")
    if grant_type is None:
        return _oauth_error(400, "invalid_request", "grant_type is required.")
    method = "client_secret"
    failure: tuple[int, str, str, dict[str, str] | None]
    if grant_type == "client_credentials" and (
        "client_assertion_type" in form or "client_assertion" in form
    ):
        assertion = form.get("client_assertion")
        if form.get("client_assertion_type") != ASSERTION_TYPE or not assertion:
            return _oauth_error(
                400,
                "invalid_request",
                f"client_assertion_type must be {ASSERTION_TYPE}, with a client_assertion.",
            )
        if "client_secret" in form or _basic_credentials(request) is not None:
            return _oauth_error(
                400, "invalid_request", "Use one client authentication method, not two."
            )
        claimed = form.get("client_id") or unverified_client_id(assertion) or ""
        find, secret, name = _finder(_find_client, session, claimed), assertion, claimed
        failure = _CLIENT_FAILURE
        method = PRIVATE_KEY_JWT
    elif grant_type == "client_credentials":
        client_id, client_secret = form.get("client_id"), form.get("client_secret")
        basic = _basic_credentials(request)
        if basic is not None:
            client_id, client_secret = basic
        if not client_id or not client_secret:
            return _oauth_error(
                401, "invalid_client", "Client authentication failed.", _BASIC_CHALLENGE
            )
        find, secret, name = _finder(_find_client, session, client_id), client_secret, client_id
        failure = (
            401,
            "invalid_client",
            "Client authentication failed.",
            _BASIC_CHALLENGE,
        )
    elif grant_type == "password":
        username, password = form.get("username"), form.get("password")
        if not username or not password:
            return _oauth_error(400, "invalid_request", "username and password are required.")
        find, secret, name = _finder(_find_user, session, username), password, username
        failure = _WRONG_PASSWORD
    else:
        return _oauth_error(400, "unsupported_grant_type", "Use client_credentials or password.")

    result = await sign_in_one_at_a_time(
        request,
        session,
        settings,
        keyring,
        find=find,
        secret=secret,
        grant=Grant(grant_type, name, scope, failure, method),
    )
    if isinstance(result, SignInRefused):
        return _oauth_error(result.status, result.error, result.description, result.headers)
    return JSONResponse(result.model_dump(), headers=NO_STORE)


async def _token_parameters(request: Request) -> dict[str, str]:
    """The token request's parameters (RFC 6749 §3.2): form-encoded UTF-8, none twice,
    none holding a NUL (no database stores one). An empty one counts as absent and an
    unknown one is ignored, as §3.1 says."""
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != FORM_MEDIA_TYPE:
        raise TokenRequestInvalid(f"Send the parameters as {FORM_MEDIA_TYPE}.")
    try:
        pairs = parse_qsl(
            (await request.body()).decode("utf-8"),
            keep_blank_values=True,
            errors="strict",
            max_num_fields=_MAX_PARAMETERS,
        )
    except (UnicodeDecodeError, ValueError) as exc:
        raise TokenRequestInvalid("The parameters are not a UTF-8 form.") from exc
    form: dict[str, str] = {}
    for name, value in pairs:
        if name not in _PARAMETERS:
            continue
        if name in form:
            raise TokenRequestInvalid(f"{name} is sent more than once.")
        if "\x00" in value:
            raise TokenRequestInvalid(f"{name} holds a NUL character.")
        form[name] = value
    return {name: value for name, value in form.items() if value}


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
    method: str = "client_secret"  # or private_key_jwt: the secret is a client assertion


def _finder(
    find: Callable[[AsyncSession, str], Awaitable[_Account]], session: AsyncSession, name: str
) -> Callable[[], Awaitable[_Account]]:
    return lambda: find(session, name)


async def sign_in_one_at_a_time(
    request: Request,
    session: AsyncSession,
    settings: Settings,
    keyring: KeyRing,
    *,
    find: Callable[[], Awaitable[_Account]],
    secret: str,
    grant: Grant,
) -> TokenResponse | SignInRefused:
    """``sign_in``, one at a time per account name in this process (app/auth/lockout.py,
    ``Gate``): a burst against one account waits here, holding no connection, rather
    than taking the pool's connections to wait on the database's lock. A sign-in that
    waits longer than lock_timeout, or finds the queue full, is refused unchecked."""
    started = time.monotonic()
    gate: lockout.Gate = request.app.state.sign_in_gate
    async with gate.turn(
        f"{grant.grant_type}:{grant.name[:100]}", settings.database_lock_timeout_seconds
    ) as admitted:
        account = await find()
        if not admitted:
            return await _refuse_busy(request, session, account, grant, "queue")
        return await sign_in(
            request,
            session,
            settings,
            keyring,
            account=account,
            secret=secret,
            grant=grant,
            started=started,
        )


async def _refuse_busy(
    request: Request, session: AsyncSession, account: _Account, grant: Grant, why: str
) -> SignInRefused:
    """Another sign-in of the account is being checked: refused, on record, unchecked."""
    event = _event(request, account, grant)
    event.event_type, event.refusal = lockout.BUSY, "busy"
    event.detail = {**(event.detail or {}), "waited": why}
    await _record(session, event)
    return SignInRefused(
        429,
        "slow_down",
        "Another sign-in to this account is in progress; try again shortly.",
        {"Retry-After": "1"},
    )


def _event(request: Request, account: _Account, grant: Grant) -> AuditEvent:
    return AuditEvent(
        principal=account.login_key,
        outcome="refused",
        **request_context(request),
        detail={
            "grant_type": grant.grant_type,
            "name": grant.name[:100],
            **({"client_auth": grant.method} if grant.method == PRIVATE_KEY_JWT else {}),
        },
    )


async def sign_in(
    request: Request,
    session: AsyncSession,
    settings: Settings,
    keyring: KeyRing,
    *,
    account: _Account,
    secret: str,
    grant: Grant,
    started: float | None = None,
) -> TokenResponse | SignInRefused:
    """Lock-out, the secret, the scopes, then a token recorded as issued. Every outcome is
    an audit event committed before the answer: failures, lock-outs, scopes refused, and
    the token issued (``auth.signed_in``, with its jti), so that no token leaves while the
    log cannot be written (503, ``sign_in_unavailable``). The token endpoint and the web
    client's sign-in share it.

    The count of failures, the lockout decision, the secret's check and the event that
    records its outcome are one transaction, serialised per account (app/auth/lockout.py):
    however many sign-ins of one account arrive at once, on however many workers and
    replicas, each sees every failure before it, so no burst gets more guesses than the
    limit. A sign-in that cannot get the account's lock within lock_timeout (``started``:
    when it began to wait) is refused (429 ``slow_down``, ``auth.login_busy``) without its
    secret being checked."""
    source = request.client.host if request.client else None
    event = _event(request, account, grant)
    try:
        await lockout.serialise(session, account.login_key)
    except lockout.SignInBusy:
        await session.rollback()
        return await _refuse_busy(request, session, account, grant, "lock_timeout")
    if started is not None and time.monotonic() - started > settings.database_lock_timeout_seconds:
        # Waited as long as PostgreSQL's lock_timeout allows, in the queue, for a pooled
        # connection or (SQLite) for the write lock: refused as a lock timeout is, so that
        # the check still to come does not take the answer past the request's deadline.
        return await _refuse_busy(request, session, account, grant, "too_long")
    counts = await lockout.lockout(session, settings, account.login_key, source)
    if counts.wait:
        event.event_type, event.refusal = lockout.LOCKED, f"locked_out_{counts.scope}"
        event.detail = {
            **(event.detail or {}),
            **counts.detail(),
            "lockout": counts.scope,
            "retry_after": counts.wait,
        }
        await _record(session, event)
        return SignInRefused(
            429,
            "slow_down",
            "Too many failed attempts; try again later.",
            {"Retry-After": str(counts.wait)},
        )
    # No commit before the check: the lock (on SQLite, the write lock) is held through
    # it, until the outcome's event is committed.
    refusal = await _authenticate(session, settings, account, secret, grant)
    if refusal is not None:
        event.event_type, event.refusal = lockout.FAILED, refusal
        event.detail = {**(event.detail or {}), **counts.detail(counting=1)}
        if reached := counts.locks_after_failure(settings):
            event.detail["locks"] = reached
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
        certificate=presented_thumbprint(request, settings),
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


async def _authenticate(
    session: AsyncSession, settings: Settings, account: _Account, credential: str, grant: Grant
) -> str | None:
    """None if the credential authenticates the account, else the refusal to record: the
    grant's error code for a wrong secret or an inactive account, or why a secret or a
    client assertion (RFC 7523) is refused."""
    if grant.method != PRIVATE_KEY_JWT:
        if not (await verify_secret(credential, account.secret_hash) and account.active):
            return grant.failure[1]
        return None if account.secret_allowed else "secret_not_allowed"
    if account.subject is None:
        return "assertion_unknown_client"
    try:
        assertion = verify_assertion(
            credential,
            account.public_jwks,
            client_id=grant.name,
            audience=settings.client_assertion_audience,
            leeway=settings.token_leeway_seconds,
        )
    except AssertionRefused as refused:
        return refused.reason
    if not account.active:
        return grant.failure[1]
    # Used once: the insert that finds the jti already there inserts nothing. The primary
    # key decides, in the database, so a burst on many workers gets one token.
    insert = sqlite.insert if settings.is_sqlite else postgresql.insert
    used = await session.execute(
        insert(UsedClientAssertion)
        .values(
            client_id=assertion.client_id,
            jti=assertion.jti,
            expires_at=datetime.fromtimestamp(
                assertion.expires_at + settings.token_leeway_seconds, UTC
            ),
        )
        .on_conflict_do_nothing()
    )
    return None if used.rowcount == 1 else "assertion_replayed"  # type: ignore[attr-defined]


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
    return await sign_in_one_at_a_time(
        request,
        session,
        settings,
        keyring,
        find=_finder(_find_user, session, username),
        secret=password,
        grant=Grant("password", username, None, _WRONG_PASSWORD),
    )


@router.get("/.well-known/jwks.json", response_model=JWKS, summary="Public signing keys")
async def jwks(keyring: KeyRingDep) -> JWKS:
    return JWKS(keys=await keyring.public_jwks())
