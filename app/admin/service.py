"""Creating, changing and listing organisations, clients and users. Each change is an audit event.

Functions add to the session; the caller commits once. The admin API and the
`cpr` command both go through here, so the rules (which scopes a kind may
hold, what a password must be) hold whichever way a change is made.
"""

import secrets
import uuid
from collections.abc import Mapping
from typing import Any, TypeVar

from sqlalchemy import Select, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit.models import AuditEvent
from app.auth.hashing import hash_secret
from app.auth.models import AccessToken
from app.db import utcnow
from app.identity.models import (
    SCOPES_BY_KIND,
    Client,
    Organisation,
    OrganisationKind,
    Scope,
    User,
    UserRole,
)

ROLE_SCOPES: dict[UserRole, frozenset[Scope]] = {
    UserRole.operator: frozenset({Scope.admin}),
    UserRole.custodian: frozenset({Scope.register_manage, Scope.audit_read}),
    UserRole.duty_officer: frozenset({Scope.lookup}),
}


class NotPermitted(ValueError):
    """A scope or role the organisation's kind may not hold."""


class WeakPassword(ValueError):
    """A password that guessing or a glance over the shoulder would find."""


MIN_PASSWORD_LENGTH = 12
# The first guesses of any attacker; compared case-insensitively.
COMMON_PASSWORDS = frozenset(
    {
        "password1234",
        "password12345",
        "password123!",
        "passwordpassword",
        "123456789012",
        "1234567890123",
        "qwertyuiop12",
        "qwertyuiopasdf",
        "letmein12345",
        "welcome12345",
        "changeme1234",
        "administrator",
        "iloveyou1234",
        "trustno1trustno1",
        "safeguarding1",
        "safeguarding123",
        "childprotection",
    }
)


def check_password(password: str, username: str) -> None:
    """Refuse the passwords found first: short, common, repetitive, or naming the account."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise WeakPassword(f"the password must have at least {MIN_PASSWORD_LENGTH} characters")
    if password.lower() in COMMON_PASSWORDS:
        raise WeakPassword("the password is on the list of common passwords")
    if len(set(password)) < 5:
        raise WeakPassword("the password repeats too few different characters")
    if username and username.lower() in password.lower():
        raise WeakPassword("the password must not contain the username")


def new_password(username: str) -> str:
    """A generated password that passes ``check_password``, shown once to whoever asked."""
    while True:
        password = secrets.token_urlsafe(18)
        try:
            check_password(password, username)
        except WeakPassword:
            continue
        return password


def grantable_scopes(kind: OrganisationKind, scopes: frozenset[Scope]) -> list[str]:
    refused = scopes - SCOPES_BY_KIND[kind]
    if refused:
        names = ", ".join(sorted(refused))
        raise NotPermitted(f"an organisation of kind {kind.value} may not hold: {names}")
    return sorted(scopes)


def _event(
    actor: str,
    event_type: str,
    organisation: Organisation,
    context: Mapping[str, Any] | None = None,
    **detail: object,
) -> AuditEvent:
    """``context`` is who asked from where (request id, source address) when over HTTP."""
    return AuditEvent(
        event_type=event_type,
        principal=actor,
        organisation_id=organisation.id,
        outcome="ok",
        detail={"organisation": organisation.name, **detail},
        **(context or {}),
    )


def create_organisation(
    session: AsyncSession,
    *,
    actor: str,
    kind: OrganisationKind,
    name: str,
    ods_code: str | None,
    contact_name: str,
    contact_phone: str,
    context: Mapping[str, Any] | None = None,
) -> Organisation:
    # The id is set here, not at flush, so that the event below can carry it.
    organisation = Organisation(
        id=uuid.uuid4(),
        kind=kind.value,
        name=name,
        ods_code=ods_code,
        contact_name=contact_name,
        contact_phone=contact_phone,
        active=True,
    )
    session.add(organisation)
    session.add(_event(actor, "admin.organisation_created", organisation, context, kind=kind.value))
    return organisation


ORGANISATION_CHANGEABLE = frozenset({"name", "contact_name", "contact_phone", "active"})


async def revoke_tokens(session: AsyncSession, subjects: list[str]) -> None:
    """Revoke every unexpired token of these subjects now: a principal disabled and
    enabled again starts over with new tokens, never the ones issued before."""
    await session.execute(
        update(AccessToken)
        .where(
            AccessToken.subject.in_(subjects),
            AccessToken.revoked_at.is_(None),
            AccessToken.expires_at > utcnow(),
        )
        .values(revoked_at=utcnow())
    )


async def update_organisation(
    session: AsyncSession,
    *,
    actor: str,
    organisation: Organisation,
    changes: Mapping[str, Any],
    context: Mapping[str, Any] | None = None,
) -> Organisation:
    """Change name, contact or ``active``. Deactivating revokes every client and user
    of the organisation on their next request, since principals are reloaded each time."""
    unknown = set(changes) - ORGANISATION_CHANGEABLE
    if unknown:
        raise ValueError(f"not changeable: {', '.join(sorted(unknown))}")
    before = {field: getattr(organisation, field) for field in changes}
    for field, value in changes.items():
        setattr(organisation, field, value)
    event_type = "admin.organisation_updated"
    if "active" in changes and changes["active"] != before["active"]:
        deactivated = not changes["active"]
        event_type = f"admin.organisation_{'deactivated' if deactivated else 'reactivated'}"
        if deactivated:
            users = await session.scalars(
                select(User.id).where(User.organisation_id == organisation.id)
            )
            clients = await session.scalars(
                select(Client.id).where(Client.organisation_id == organisation.id)
            )
            await revoke_tokens(
                session, [f"user:{u}" for u in users] + [f"client:{c}" for c in clients]
            )
    session.add(
        _event(
            actor,
            event_type,
            organisation,
            context,
            changed={
                field: {"from": before[field], "to": value} for field, value in changes.items()
            },
        )
    )
    return organisation


def new_client_secret() -> str:
    return secrets.token_urlsafe(32)


def create_client(
    session: AsyncSession,
    *,
    actor: str,
    organisation: Organisation,
    name: str,
    scopes: frozenset[Scope],
    context: Mapping[str, Any] | None = None,
    public_jwks: dict[str, Any] | None = None,
) -> tuple[Client, str]:
    """A system client; its secret is returned once and stored only as a hash. With
    ``public_jwks`` (RFC 7523 private_key_jwt) it authenticates with its key only: its
    secret is refused (``secret_allowed`` false) and never shown (create_key_client)."""
    granted = grantable_scopes(OrganisationKind(organisation.kind), scopes)
    secret = new_client_secret()
    client = Client(
        id=f"cpr-{secrets.token_hex(8)}",
        organisation_id=organisation.id,
        name=name,
        secret_hash=hash_secret(secret),
        scopes=granted,
        active=True,
        public_jwks=public_jwks,
        secret_allowed=public_jwks is None,
    )
    session.add(client)
    session.add(
        _event(
            actor,
            "admin.client_created",
            organisation,
            context,
            client_id=client.id,
            scopes=granted,
            **({"key_ids": _key_ids(public_jwks)} if public_jwks is not None else {}),
        )
    )
    return client, secret


def create_key_client(
    session: AsyncSession,
    *,
    actor: str,
    organisation: Organisation,
    name: str,
    scopes: frozenset[Scope],
    public_jwks: dict[str, Any],
    context: Mapping[str, Any] | None = None,
) -> Client:
    """A system client that authenticates with RFC 7523 assertions signed by one of
    ``public_jwks``; its secret is random, refused, and never shown."""
    client, _refused = create_client(
        session,
        actor=actor,
        organisation=organisation,
        name=name,
        scopes=scopes,
        context=context,
        public_jwks=public_jwks,
    )
    return client


def _key_ids(public_jwks: dict[str, Any]) -> list[str]:
    return [str(key.get("kid", "")) for key in public_jwks.get("keys", [])]


def set_client_key(
    session: AsyncSession,
    *,
    actor: str,
    client: Client,
    organisation: Organisation,
    public_jwks: dict[str, Any],
    secret_allowed: bool | None = None,
    context: Mapping[str, Any] | None = None,
) -> Client:
    """Register (or replace) the public keys a client signs its assertions with; the
    old keys stop working when this commits. ``secret_allowed``: None leaves it."""
    client.public_jwks = public_jwks
    if secret_allowed is not None:
        client.secret_allowed = secret_allowed
    session.add(
        _event(
            actor,
            "admin.client_key_set",
            organisation,
            context,
            client_id=client.id,
            key_ids=_key_ids(public_jwks),
            secret_allowed=client.secret_allowed,
        )
    )
    return client


def reset_client_secret(
    session: AsyncSession,
    *,
    actor: str,
    client: Client,
    organisation: Organisation,
    context: Mapping[str, Any] | None = None,
) -> str:
    """A new secret, returned once; the old one stops working when this commits."""
    secret = new_client_secret()
    client.secret_hash = hash_secret(secret)
    session.add(
        _event(actor, "admin.client_secret_rotated", organisation, context, client_id=client.id)
    )
    return secret


def revoke_client(
    session: AsyncSession,
    *,
    actor: str,
    client: Client,
    organisation: Organisation,
    context: Mapping[str, Any] | None = None,
) -> Client:
    """Revoke for good: tokens already issued fail on their next request.

    There is no un-revoke; a system that should come back gets a new client.
    """
    was_active = client.active
    client.active = False
    session.add(
        _event(
            actor,
            "admin.client_revoked",
            organisation,
            context,
            client_id=client.id,
            was_active=was_active,
        )
    )
    return client


def create_user(
    session: AsyncSession,
    *,
    actor: str,
    organisation: Organisation,
    username: str,
    full_name: str,
    role: UserRole,
    password: str,
    context: Mapping[str, Any] | None = None,
) -> User:
    kind = OrganisationKind(organisation.kind)
    try:
        granted = grantable_scopes(kind, ROLE_SCOPES[role])
    except NotPermitted as exc:
        raise NotPermitted(
            f"a {role.value} user may not belong to an organisation of kind {kind.value} ({exc})"
        ) from exc
    check_password(password, username)
    user = User(
        id=uuid.uuid4(),
        organisation_id=organisation.id,
        username=username,
        full_name=full_name,
        role=role.value,
        password_hash=hash_secret(password),
        scopes=granted,
        active=True,
    )
    session.add(user)
    session.add(
        _event(
            actor,
            "admin.user_created",
            organisation,
            context,
            user_id=str(user.id),
            username=username,
            role=role.value,
        )
    )
    return user


def reset_password(
    session: AsyncSession,
    *,
    actor: str,
    user: User,
    organisation: Organisation,
    password: str,
    context: Mapping[str, Any] | None = None,
) -> None:
    check_password(password, user.username)
    user.password_hash = hash_secret(password)
    session.add(
        _event(actor, "admin.user_password_reset", organisation, context, username=user.username)
    )


async def set_user_active(
    session: AsyncSession,
    *,
    actor: str,
    user: User,
    organisation: Organisation,
    active: bool,
    context: Mapping[str, Any] | None = None,
) -> User:
    """Disable or enable a user. Disabling takes effect on the user's next request, and
    revokes the user's tokens, so that enabling the user again does not revive them."""
    was_active = user.active
    user.active = active
    if not active:
        await revoke_tokens(session, [f"user:{user.id}"])
    session.add(
        _event(
            actor,
            "admin.user_enabled" if active else "admin.user_disabled",
            organisation,
            context,
            user_id=str(user.id),
            username=user.username,
            was_active=was_active,
        )
    )
    return user


# --- listing ---------------------------------------------------------------------------


Row = TypeVar("Row", Organisation, Client, User)


async def _rows(
    session: AsyncSession, statement: Select[Row], limit: int | None, offset: int
) -> list[Row]:
    return list((await session.scalars(statement.limit(limit).offset(offset))).all())


async def list_organisations(
    session: AsyncSession,
    *,
    kind: str | None = None,
    active: bool | None = None,
    limit: int | None = None,
    offset: int = 0,
) -> list[Organisation]:
    """Organisations by name, of one kind or any, active or not or both."""
    statement = select(Organisation).order_by(Organisation.name)
    if kind is not None:
        statement = statement.where(Organisation.kind == kind)
    if active is not None:
        statement = statement.where(Organisation.active == active)
    return await _rows(session, statement, limit, offset)


async def list_clients(
    session: AsyncSession,
    *,
    organisation_id: uuid.UUID | None = None,
    active: bool | None = None,
    limit: int | None = None,
    offset: int = 0,
) -> list[Client]:
    """System clients, oldest first, of one organisation or all."""
    statement = select(Client).order_by(Client.created_at, Client.id)
    if organisation_id is not None:
        statement = statement.where(Client.organisation_id == organisation_id)
    if active is not None:
        statement = statement.where(Client.active == active)
    return await _rows(session, statement, limit, offset)


async def list_users(
    session: AsyncSession,
    *,
    organisation_id: uuid.UUID | None = None,
    active: bool | None = None,
    limit: int | None = None,
    offset: int = 0,
) -> list[User]:
    """Users by username, of one organisation or all."""
    statement = select(User).order_by(User.username)
    if organisation_id is not None:
        statement = statement.where(User.organisation_id == organisation_id)
    if active is not None:
        statement = statement.where(User.active == active)
    return await _rows(session, statement, limit, offset)
