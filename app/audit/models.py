"""The audit log: one row per event, never updated or deleted (database triggers)."""

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Index, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, utcnow

# The rows of the lookup limits' partial indexes (as migrations 0007 and 0009 wrote them).
LOOKUPS = "event_type = 'lookup'"
REFERRALS = "event_type = 'lookup' AND outcome = 'refer_to_custodian'"


class AuditEvent(Base):
    __tablename__ = "audit_events"
    # Volume limits and sign-in lockout count recent events by principal; the lookup's
    # limits count lookups and referrals only, from partial indexes of just those
    # (migrations 0007 and 0009; app/lookup/limits.py).
    __table_args__ = (
        Index("ix_audit_events_principal_occurred_at", "principal", "occurred_at"),
        Index(
            "ix_audit_events_lookups_principal_occurred_at",
            "principal",
            "occurred_at",
            sqlite_where=text(LOOKUPS),
            postgresql_where=text(LOOKUPS),
        ),
        Index(
            "ix_audit_events_lookups_principal_enquirer_id_occurred_at",
            "principal",
            "enquirer_id",
            "occurred_at",
            sqlite_where=text(LOOKUPS),
            postgresql_where=text(LOOKUPS),
        ),
        Index(
            "ix_audit_events_referrals_principal_occurred_at",
            "principal",
            "occurred_at",
            sqlite_where=text(REFERRALS),
            postgresql_where=text(REFERRALS),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    occurred_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    event_type: Mapped[str] = mapped_column(String(64))
    request_id: Mapped[str | None] = mapped_column(String(64))
    # "client:<id>" or "user:<id>"; null when the caller could not be identified.
    principal: Mapped[str | None] = mapped_column(String(100))
    organisation_id: Mapped[uuid.UUID | None]
    enquirer: Mapped[dict[str, Any] | None]
    enquirer_id: Mapped[str | None] = mapped_column(String(64))
    purpose: Mapped[str | None] = mapped_column(String(64))
    reason: Mapped[str | None] = mapped_column(Text)
    # The normalised identifiers asked for (lookups only).
    query: Mapped[dict[str, Any] | None]
    outcome: Mapped[str] = mapped_column(String(64))
    refusal: Mapped[str | None] = mapped_column(String(64))
    disclosed: Mapped[dict[str, Any] | None]
    entry_id: Mapped[uuid.UUID | None] = mapped_column(index=True)
    entry_version: Mapped[int | None]
    # The authority whose child the event concerns: what its custodians may review.
    authority_id: Mapped[uuid.UUID | None] = mapped_column(index=True)
    detail: Mapped[dict[str, Any] | None]
    source_address: Mapped[str | None] = mapped_column(String(64))


class AuditUnsealed(Base):
    """Events waiting for the sequencer; filled by a database trigger on every insert
    into ``audit_events``, so no code path can forget to queue its event, and emptied
    only by a trigger on every insert into ``audit_seals``: an event leaves the queue
    by being sealed, or not at all. The application role may only read it.

    ``queued_at`` is the database's clock when the event was written (never the
    writer's): the verifier measures the sealing delay from it.
    """

    __tablename__ = "audit_unsealed"
    # The sequencer reads the queue in chain order from this index (migration 0010).
    __table_args__ = (Index("ix_audit_unsealed_occurred_at_event_id", "occurred_at", "event_id"),)

    event_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    occurred_at: Mapped[datetime]
    queued_at: Mapped[datetime]


class AuditSeal(Base):
    """An event's place in the hash chain (append-only).

    ``position`` is assigned gap-free by the sequencer under a lock, never by a
    sequence: concurrent transactions commit out of order.
    """

    __tablename__ = "audit_seals"

    position: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    event_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("audit_events.id"), unique=True)
    leaf_hash: Mapped[str] = mapped_column(String(64))
    chain_hash: Mapped[str] = mapped_column(String(64))
    sealed_at: Mapped[datetime] = mapped_column(default=utcnow)


class AuditCheckpoint(Base):
    """A signed statement of the log's size and head hash (append-only).

    Also written outside the database: only a copy held elsewhere catches a
    truncated tail or a rewritten history.
    """

    __tablename__ = "audit_checkpoints"

    size: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    head_hash: Mapped[str] = mapped_column(String(64))
    signed_at: Mapped[datetime] = mapped_column(default=utcnow)
    note: Mapped[str] = mapped_column(Text)


class AuditArchive(Base):
    """A segment of the log written to an archive file and deleted (append-only):
    positions up to ``size``, closed by the checkpoint ``note`` (head ``head_hash``).
    The newest is where the chain now starts: the verifier's first head, and the
    sequencer's when no seal is left. The database's guards let the schema owner delete
    only the rows it covers (migration 0013); the application role reads it only."""

    __tablename__ = "audit_archives"

    size: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    head_hash: Mapped[str] = mapped_column(String(64))
    note: Mapped[str] = mapped_column(Text)
    # Of the archive file, as written.
    sha256: Mapped[str] = mapped_column(String(64))
    # The newest occurred_at among the archived events.
    last_occurred_at: Mapped[datetime]
    archived_at: Mapped[datetime] = mapped_column(default=utcnow)


class AuditEventAuthority(Base):
    """The authorities an enquiry concerns when it is not one: a ``refer_to_custodian``
    answer whose matched entries belong to several authorities (``authority_id`` is
    then null). Filled by a database trigger from the event's ``detail.matched`` (which
    the seal covers), so every such authority's custodians see and are told of it.
    Append-only."""

    __tablename__ = "audit_event_authorities"

    authority_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    event_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("audit_events.id"), primary_key=True)
