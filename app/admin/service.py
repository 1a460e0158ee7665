"""Creating organisations, clients and users. Each change is an audit event.

Functions add to the session; the caller commits once.
"""

import secrets

from sqlalchemy.ext.asyncio import AsyncSession

from app.admin.models import (
    SCOPES_BY_KIND,
    Client,
    Organisation,
    OrganisationKind,
    Scope,
    User,
    UserRole,
)
from app.audit.models import AuditEvent
from app.auth.hashing import hash_secret

ROLE_SCOPES: dict[UserRole, frozenset[Scope]] = {
    UserRole.operator: frozenset({Scope.admin}),
    UserRole.custodian: frozenset({Scope.register_manage, Scope.audit_read}),
    UserRole.duty_officer: frozenset({Scope.lookup}),
}


class NotPermitted(ValueError):
    """A scope or role the organisation's kind may not hold."""


def grantable_scopes(kind: OrganisationKind, scopes: frozenset[Scope]) -> list[str]:
    refused = scopes - SCOPES_BY_KIND[kind]
    if refused:
        names = ", ".join(sorted(refused))
        raise NotPermitted(f"a {kind.value} organisation may not hold: {names}")
    return sorted(scopes)


def _event(actor: str, event_type: str, organisation: Organisation, **detail: object) -> AuditEvent:
    return AuditEvent(
        event_type=event_type,
        principal=actor,
        organisation_id=organisation.id,
        outcome="ok",
        detail={"organisation": organisation.name, **detail},
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
) -> Organisation:
    organisation = Organisation(
        kind=kind.value,
        name=name,
        ods_code=ods_code,
        contact_name=contact_name,
        contact_phone=contact_phone,
        active=True,
    )
    session.add(organisation)
    session.add(_event(actor, "admin.organisation_created", organisation, kind=kind.value))
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
) -> tuple[Client, str]:
    """A system client; its secret is returned once and stored only as a hash."""
    granted = grantable_scopes(OrganisationKind(organisation.kind), scopes)
    secret = new_client_secret()
    client = Client(
        id=f"cpr-{secrets.token_hex(8)}",
        organisation_id=organisation.id,
        name=name,
        secret_hash=hash_secret(secret),
        scopes=granted,
        active=True,
    )
    session.add(client)
    session.add(
        _event(actor, "admin.client_created", organisation, client_id=client.id, scopes=granted)
    )
    return client, secret


def reset_client_secret(
    session: AsyncSession, *, actor: str, client: Client, organisation: Organisation
) -> str:
    secret = new_client_secret()
    client.secret_hash = hash_secret(secret)
    session.add(_event(actor, "admin.client_secret_rotated", organisation, client_id=client.id))
    return secret


def create_user(
    session: AsyncSession,
    *,
    actor: str,
    organisation: Organisation,
    username: str,
    full_name: str,
    role: UserRole,
    password: str,
) -> User:
    granted = grantable_scopes(OrganisationKind(organisation.kind), ROLE_SCOPES[role])
    user = User(
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
        _event(actor, "admin.user_created", organisation, username=username, role=role.value)
    )
    return user


def reset_password(
    session: AsyncSession, *, actor: str, user: User, organisation: Organisation, password: str
) -> None:
    user.password_hash = hash_secret(password)
    session.add(_event(actor, "admin.user_password_reset", organisation, username=user.username))
