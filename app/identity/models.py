"""Organisations and the principals that act for them."""

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import ForeignKey, String, true
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.db import Base, utcnow


class OrganisationKind(StrEnum):
    emergency_department = "emergency_department"
    out_of_hours_social_care = "out_of_hours_social_care"
    police = "police"
    local_authority = "local_authority"
    service_operator = "service_operator"


REFERENCE_POINT_KINDS = frozenset(
    {
        OrganisationKind.emergency_department,
        OrganisationKind.out_of_hours_social_care,
        OrganisationKind.police,
    }
)


class Scope(StrEnum):
    lookup = "register:lookup"
    register_manage = "register:manage"
    audit_read = "audit:read"
    admin = "admin"


SCOPES_BY_KIND: dict[OrganisationKind, frozenset[Scope]] = {
    **{kind: frozenset({Scope.lookup}) for kind in REFERENCE_POINT_KINDS},
    OrganisationKind.local_authority: frozenset({Scope.register_manage, Scope.audit_read}),
    OrganisationKind.service_operator: frozenset({Scope.admin}),
}


class Organisation(Base):
    __tablename__ = "organisations"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    kind: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(200), unique=True)
    ods_code: Mapped[str | None] = mapped_column(String(16), unique=True)
    # The 24-hour number a reference point is told to call.
    contact_name: Mapped[str] = mapped_column(String(200))
    contact_phone: Mapped[str] = mapped_column(String(40))
    active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Client(Base):
    """A system (hospital, police) that calls the API with client credentials."""

    __tablename__ = "clients"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    organisation_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organisations.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    secret_hash: Mapped[str] = mapped_column(String(255))
    scopes: Mapped[list[str]]
    active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # RFC 7523 private_key_jwt: the public keys (a JWKS) its client assertions are signed
    # with, or None. A client registered with a key has a random secret never shown.
    public_jwks: Mapped[dict[str, Any] | None]
    # False refuses client_secret authentication (invalid_client): keys only.
    secret_allowed: Mapped[bool] = mapped_column(default=True, server_default=true())

    organisation: Mapped[Organisation] = relationship(lazy="raise")


class UserRole(StrEnum):
    operator = "operator"
    custodian = "custodian"
    duty_officer = "duty_officer"


class User(Base):
    """A member of staff who signs in to the thin client or the CLI."""

    __tablename__ = "users"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    organisation_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organisations.id"), index=True)
    username: Mapped[str] = mapped_column(String(100), unique=True)
    full_name: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(32))
    password_hash: Mapped[str] = mapped_column(String(255))
    scopes: Mapped[list[str]]
    active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    organisation: Mapped[Organisation] = relationship(lazy="raise")
