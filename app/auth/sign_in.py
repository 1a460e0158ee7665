"""Signing in: a client's or a user's secret checked, one at a time per account, against
the lockout; the token issued and the sign-in on record. Shared by the token endpoint
(app/auth/routes.py) and the web client's sign-in page."""

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fastapi import Request
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit.models import AuditEvent
from app.audit.service import record, request_context
from app.auth import lockout
from app.auth.assertions import (
    AssertionRefused,
    verify_assertion,
)
from app.auth.certificates import presented_thumbprint
from app.auth.hashing import verify_secret
from app.auth.keys import KeyRing
from app.auth.models import AccessToken, UsedClientAssertion
from app.auth.tokens import issue_token
from app.config import Settings
from app.errors import ProblemError
from app.identity.models import SCOPES_BY_KIND, Client, Organisation, OrganisationKind, User

WRONG_PASSWORD = (400, "invalid_grant", "Wrong username or password.", None)


NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


class TokenResponse(BaseModel):
    access_token: str
    token_type: str = "Bearer"  # noqa: S105  (not a secret)
    expires_in: int
    scope: str


@dataclass(frozen=True)
class Account:
    """Who is signing in, found before the secret is checked."""

    login_key: str  # what failures are counted against: the principal, or the name tried
    subject: str | None
    secret_hash: str | None
    active: bool
    scopes: set[str]
    organisation: Organisation | None
    public_jwks: dict[str, Any] | None = None  # a client's keys for private_key_jwt
    secret_allowed: bool = True


async def find_client(session: AsyncSession, client_id: str) -> Account:
    row = (
        await session.execute(
            select(Client, Organisation)
            .join(Organisation, Client.organisation_id == Organisation.id)
            .where(Client.id == client_id)
        )
    ).first()
    if row is None:
        return Account(f"login:client:{client_id[:64]}", None, None, False, set(), None)
    client, org = row
    subject = f"client:{client.id}"
    active = client.active and org.active
    return Account(
        subject,
        subject,
        client.secret_hash,
        active,
        set(client.scopes),
        org,
        client.public_jwks,
        client.secret_allowed,
    )


async def find_user(session: AsyncSession, username: str) -> Account:
    row = (
        await session.execute(
            select(User, Organisation)
            .join(Organisation, User.organisation_id == Organisation.id)
            .where(User.username == username)
        )
    ).first()
    if row is None:
        return Account(f"login:user:{username[:80]}", None, None, False, set(), None)
    user, org = row
    subject = f"user:{user.id}"
    return Account(
        subject, subject, user.password_hash, user.active and org.active, set(user.scopes), org
    )


PRIVATE_KEY_JWT = "private_key_jwt"
CLIENT_FAILURE: tuple[int, str, str, dict[str, str] | None] = (
    401,
    "invalid_client",
    "Client authentication failed.",
    None,
)


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


def finder(
    find: Callable[[AsyncSession, str], Awaitable[Account]], session: AsyncSession, name: str
) -> Callable[[], Awaitable[Account]]:
    return lambda: find(session, name)


async def sign_in_one_at_a_time(
    request: Request,
    session: AsyncSession,
    settings: Settings,
    keyring: KeyRing,
    *,
    find: Callable[[], Awaitable[Account]],
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
    request: Request, session: AsyncSession, account: Account, grant: Grant, why: str
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


def _event(request: Request, account: Account, grant: Grant) -> AuditEvent:
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
    account: Account,
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
    session: AsyncSession, settings: Settings, account: Account, credential: str, grant: Grant
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
        find=finder(find_user, session, username),
        secret=password,
        grant=Grant("password", username, None, WRONG_PASSWORD),
    )
