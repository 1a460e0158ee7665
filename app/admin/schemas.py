"""What the admin API accepts and answers.

Inputs refuse unknown fields. Answers are built from these classes, never from
the ORM rows, so a secret or password hash cannot reach a response by accident.
"""

import json
import uuid
from datetime import datetime
from typing import Annotated, Any, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    StringConstraints,
    model_validator,
)

from app.auth.assertions import InvalidPublicKey, public_jwks
from app.identity.models import OrganisationKind, Scope, UserRole

Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
Name = Annotated[Text, StringConstraints(max_length=200)]
Phone = Annotated[
    str, StringConstraints(strip_whitespace=True, pattern=r"^\+?[0-9][0-9 ()-]{2,38}$")
]
OdsCode = Annotated[
    str,
    StringConstraints(strip_whitespace=True, to_upper=True, pattern=r"^[A-Za-z0-9-]{1,16}$"),
]
Username = Annotated[
    str, StringConstraints(strip_whitespace=True, pattern=r"^[A-Za-z0-9._@-]{3,100}$")
]


def _distinct(scopes: list[Scope]) -> list[Scope]:
    return sorted(set(scopes))


class OrganisationCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: OrganisationKind
    name: Name
    ods_code: OdsCode | None = None
    # Whom a reference point is told to call about this authority's children (24 hours).
    contact_name: Name
    contact_phone: Phone


class OrganisationUpdate(BaseModel):
    """The fields to change; ``active: false`` revokes every client and user at once."""

    model_config = ConfigDict(extra="forbid")

    name: Name | None = None
    contact_name: Name | None = None
    contact_phone: Phone | None = None
    active: bool | None = None

    @model_validator(mode="after")
    def _something_to_change(self) -> Self:
        if not self.model_fields_set:
            raise ValueError("give at least one field to change")
        nulls = sorted(field for field in self.model_fields_set if getattr(self, field) is None)
        if nulls:
            raise ValueError(f"may not be null: {', '.join(nulls)}")
        return self

    def changes(self) -> dict[str, Any]:
        return self.model_dump(exclude_unset=True)


class OrganisationRead(BaseModel):
    id: uuid.UUID
    kind: OrganisationKind
    name: str
    ods_code: str | None
    contact_name: str
    contact_phone: str
    active: bool
    created_at: datetime


def _as_jwks(value: Any) -> dict[str, Any]:
    if isinstance(value, str) and len(value) > 20_000:
        raise ValueError("a public key is at most 20,000 characters")
    if not isinstance(value, str | dict):
        raise ValueError("a JWKS (object or JSON text) or a PEM public key")
    try:
        return public_jwks(value if isinstance(value, str) else json.dumps(value))
    except InvalidPublicKey as exc:
        raise ValueError(str(exc)) from exc


# Stored as a JWKS of public keys: RSA (RS256, 2048 bits or more) or EC P-256 (ES256).
PublicKey = Annotated[
    dict[str, Any],
    BeforeValidator(_as_jwks, json_schema_input_type=str | dict[str, Any]),
    Field(description="A JWKS (object or JSON text) or a PEM public key."),
]


class ClientCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    organisation_id: uuid.UUID
    name: Name
    scopes: Annotated[list[Scope], Field(min_length=1), AfterValidator(_distinct)]
    # RFC 7523 private_key_jwt: a JWKS, or a PEM public key, instead of a secret.
    public_key: PublicKey | None = None


class ClientKeySet(BaseModel):
    """A client's public keys for private_key_jwt (a JWKS or a PEM public key)."""

    model_config = ConfigDict(extra="forbid")

    public_key: PublicKey
    # False: the client's secret is refused from now on. Omitted: unchanged.
    secret_allowed: bool | None = None


class ClientRead(BaseModel):
    client_id: str
    organisation_id: uuid.UUID
    name: str
    scopes: list[str]
    active: bool
    created_at: datetime
    secret_allowed: bool
    public_jwks: dict[str, Any] | None


class ClientCreated(ClientRead):
    """A client with its secret. The secret is shown in this answer only (on creation or
    rotation); the service keeps a slow salted hash and cannot show it again."""

    client_secret: str | None  # None for a client registered with a public key


class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    organisation_id: uuid.UUID
    username: Username
    full_name: Name
    role: UserRole
    # At least 12 characters, not a common password, not containing the username.
    password: Annotated[SecretStr, Field(max_length=128)]


class UserRead(BaseModel):
    id: uuid.UUID
    organisation_id: uuid.UUID
    username: str
    full_name: str
    role: UserRole
    scopes: list[str]
    active: bool
    created_at: datetime
