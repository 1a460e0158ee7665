"""Public halves of the signing keys; private halves stay in files (see keys.py)."""

from datetime import datetime
from typing import Any

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, utcnow


class AccessToken(Base):
    """Every token issued: a token whose ``jti`` is not here was not issued by us,
    and a revoked one stops working at once."""

    __tablename__ = "access_tokens"

    jti: Mapped[str] = mapped_column(String(64), primary_key=True)
    subject: Mapped[str] = mapped_column(String(100), index=True)
    issued_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(index=True)
    revoked_at: Mapped[datetime | None]


class UsedClientAssertion(Base):
    """The ``jti`` of every client assertion accepted (RFC 7523 §3, item 7), kept until it
    has expired: the primary key makes a second use fail in the database, however many
    workers see it at once. ``cpr tokens purge`` forgets the expired ones."""

    __tablename__ = "used_client_assertions"

    client_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    jti: Mapped[str] = mapped_column(String(128), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(index=True)


class SigningKey(Base):
    __tablename__ = "signing_keys"

    kid: Mapped[str] = mapped_column(String(64), primary_key=True)
    algorithm: Mapped[str] = mapped_column(String(16))
    public_jwk: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # After this instant tokens signed with the key are refused; null while current.
    retires_at: Mapped[datetime | None]
