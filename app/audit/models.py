"""The audit log: one row per event, never updated or deleted (database triggers)."""

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ColumnElement, DateTime, ForeignKey, Index, String, Text, text
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.sqltypes import NullType
from sqlalchemy.sql.visitors import InternalTraversal
from sqlalchemy.types import String as StringType

from app.db import Base, utcnow

# The rows of the lookup limits' partial indexes (as migrations 0007 and 0009 wrote them).
LOOKUPS = "event_type = 'lookup'"
REFERRALS = "event_type = 'lookup' AND outcome = 'refer_to_custodian'"
# The rows of the custodians' indexes (migration 0012): lookups about one authority's
# child. ``authority_id = :a`` implies the second term, on both databases.
AUTHORITY_LOOKUPS = "event_type = 'lookup' AND authority_id IS NOT NULL"
# The rows of the alerts' index (migration 0014): lookups that found no plan.
NOT_FOUND = "event_type = 'lookup' AND outcome = 'not_on_plan'"
# The rows of the alerts' other indexes (migration 0016).
REFUSED = "event_type = 'lookup' AND refusal IS NOT NULL"
# The answer through coalesce, as the alert writes it: so that no condition on the plain
# column (the volume limits' national index of referrals) can read this one, and the
# alert's cannot read that one, which holds no authority.
AUTHORITY_REFERRALS = (
    "event_type = 'lookup' AND authority_id IS NOT NULL "
    "AND coalesce(outcome, '') = 'refer_to_custodian'"
)
AUTHORITY_ENTRIES = "event_type = 'lookup' AND authority_id IS NOT NULL AND entry_id IS NOT NULL"
# The rows of the index of one entry's enquiries (migration 0018): lookups answered with
# an entry. ``entry_id = :e`` implies the second term, on both databases.
ENTRY_LOOKUPS = "event_type = 'lookup' AND entry_id IS NOT NULL"


class JsonText(ColumnElement[str]):
    """One text field of a JSON column, read by the database (``->>`` on PostgreSQL,
    ``json_extract`` on SQLite), with the key a literal: a bound key would not match an
    index on the expression (SQLite never, PostgreSQL not in a prepared statement's
    generic plan). The export reads its fields so, not as the driver's parsed JSON."""

    type = StringType()
    inherit_cache = True

    _traverse_internals = [  # noqa: RUF012
        ("column", InternalTraversal.dp_clauseelement),
        ("key", InternalTraversal.dp_string),
    ]

    def __init__(self, column: ColumnElement[Any], key: str) -> None:
        if not key.isidentifier():
            raise ValueError(f"not a plain key: {key!r}")
        self.column = column
        self.key = key

    @property
    def _from_objects(self) -> list[Any]:
        return self.column._from_objects


class AskedNhsNumber(JsonText):
    """The NHS number a lookup asked with, ``query.nhs_number``, spelt the same in the
    custodians' searches and in the index on it (migration 0012)."""

    inherit_cache = True

    def __init__(self, column: ColumnElement[Any]) -> None:
        super().__init__(column, "nhs_number")


class IndexTime(ColumnElement[datetime]):
    """``occurred_at`` as the keyed indexes hold it, the volume limits' (app/lookup/
    limits.py) and the custodians' (app/audit/review.py): on PostgreSQL
    ``timezone('UTC', occurred_at)``, an expression no other index holds. So a count's
    window, or a page's newest-first order, can only be read from its own index, led by
    the caller or the authority, where it is a range the scan stops at: with the plain
    column the planner, once ANALYZE showed the log's append order, preferred walking
    ix_audit_events_occurred_at through every principal's or authority's events instead.
    On SQLite, the column itself."""

    type = DateTime()
    inherit_cache = True
    _traverse_internals = [("value", InternalTraversal.dp_clauseelement)]  # noqa: RUF012

    def __init__(self, value: ColumnElement[Any]) -> None:
        self.value = value


@compiles(IndexTime, "postgresql")
def _index_time_postgresql(element: IndexTime, compiler: SQLCompiler, **kw: object) -> str:
    return f"timezone('UTC', {compiler.process(element.value, **kw)})"


@compiles(IndexTime)
def _index_time(element: IndexTime, compiler: SQLCompiler, **kw: object) -> str:
    return compiler.process(element.value, **kw)


@compiles(JsonText, "postgresql")
def _json_text_postgresql(element: JsonText, compiler: SQLCompiler, **kw: object) -> str:
    return f"({compiler.process(element.column, **kw)} ->> '{element.key}')"


@compiles(JsonText)
def _json_text_sqlite(element: JsonText, compiler: SQLCompiler, **kw: object) -> str:
    return f"json_extract({compiler.process(element.column, **kw)}, '$.{element.key}')"


class ParsedJson(ColumnElement[Any]):
    """A JSON column parsed once: on PostgreSQL cast to ``jsonb``, whose fields ``->>``
    looks up without parsing the stored text again for each (the export reads ten
    fields of three columns a row); on SQLite the column itself."""

    type = NullType()
    inherit_cache = True
    _traverse_internals = [("column", InternalTraversal.dp_clauseelement)]  # noqa: RUF012

    def __init__(self, column: ColumnElement[Any]) -> None:
        self.column = column

    @property
    def _from_objects(self) -> list[Any]:
        return self.column._from_objects


@compiles(ParsedJson, "postgresql")
def _parsed_json_postgresql(element: ParsedJson, compiler: SQLCompiler, **kw: object) -> str:
    return f"CAST({compiler.process(element.column, **kw)} AS jsonb)"


@compiles(ParsedJson)
def _parsed_json(element: ParsedJson, compiler: SQLCompiler, **kw: object) -> str:
    return compiler.process(element.column, **kw)


class AuditEvent(Base):
    __tablename__ = "audit_events"
    # Sign-in lockout counts recent events by principal; the lookup's limits count
    # lookups and referrals only, from partial indexes of just those (below).
    __table_args__ = (Index("ix_audit_events_principal_occurred_at", "principal", "occurred_at"),)

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


# The volume limits' counts (app/lookup/limits.py; migration 0012): each led by the
# caller's key, then the window's time. The enquirer's is led by the enquirer, not the
# client: one led by (principal) could serve the client's count too, reading the client's
# whole history. On PostgreSQL each also carries occurred_at itself, so that a count is
# read from the index alone.
_EVENTS = AuditEvent.__table__.c
_LIMIT_KEYS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("ix_audit_events_lookups_principal_limit_time", ("principal",), LOOKUPS),
    (
        "ix_audit_events_lookups_enquirer_id_principal_limit_time",
        ("enquirer_id", "principal"),
        LOOKUPS,
    ),
    ("ix_audit_events_referrals_principal_limit_time", ("principal",), REFERRALS),
)
for _name, _keys, _where in _LIMIT_KEYS:
    Index(
        _name,
        *(_EVENTS[key] for key in _keys),
        IndexTime(_EVENTS.occurred_at),
        sqlite_where=text(_where),
        postgresql_where=text(_where),
        postgresql_include=["occurred_at"],
    )

# A custodian's reads (app/audit/review.py; migration 0012): led by the authority, then
# the filter, then newest-first order with its tie-break, so a page is a walk that stops
# when the page is full. Lookups about one authority's child only (a third of the log).
_CUSTODIAN_KEYS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("ix_audit_events_lookups_authority_id_index_time", ()),
    ("ix_audit_events_lookups_authority_id_enquirer_id_index_time", ("enquirer_id",)),
    ("ix_audit_events_lookups_authority_id_purpose_index_time", ("purpose",)),
)
for _name, _keys in _CUSTODIAN_KEYS:
    Index(
        _name,
        _EVENTS.authority_id,
        *(_EVENTS[key] for key in _keys),
        IndexTime(_EVENTS.occurred_at),
        _EVENTS.id,
        sqlite_where=text(AUTHORITY_LOOKUPS),
        postgresql_where=text(AUTHORITY_LOOKUPS),
    )

# The alerts' national scans of not-found answers (app/audit/alerts.py
# ``_busiest_windows``; migration 0014): those answers alone, by the time as the keyed
# indexes hold it, carrying on PostgreSQL every column the scans group, count and order
# by, so that they read the window from the index alone, never the log's heap. Partial
# on the answer, so that no count of the volume limits can read it instead of its own.
Index(
    "ix_audit_events_not_found_index_time",
    IndexTime(_EVENTS.occurred_at),
    sqlite_where=text(NOT_FOUND),
    postgresql_where=text(NOT_FOUND),
    postgresql_include=["organisation_id", "enquirer_id", "principal", "occurred_at", "id"],
)

# The alerts' other scans (migration 0016): refusals, an authority's referrals (client
# mismatch), and an authority's answers that named an entry (repeat presentations, read
# from the index alone on PostgreSQL).
_ALERT_KEYS: tuple[tuple[str, tuple[str, ...], tuple[str, ...], list[str], str], ...] = (
    (
        "ix_audit_events_refused_index_time",
        (),
        ("refusal",),
        ["organisation_id", "principal", "enquirer_id", "purpose", "occurred_at"],
        REFUSED,
    ),
    (
        "ix_audit_events_authority_referrals_time",
        ("authority_id",),
        ("id",),
        [],
        AUTHORITY_REFERRALS,
    ),
    (
        "ix_audit_events_authority_entries_time",
        ("authority_id",),
        ("entry_id", "organisation_id"),
        ["occurred_at"],
        AUTHORITY_ENTRIES,
    ),
)
for _name, _lead, _trail, _include, _where in _ALERT_KEYS:
    Index(
        _name,
        *(_EVENTS[key] for key in _lead),
        IndexTime(_EVENTS.occurred_at),
        *(_EVENTS[key] for key in _trail),
        sqlite_where=text(_where),
        postgresql_where=text(_where),
        postgresql_include=_include,
    )

# The enquiries about one child (app/audit/review.py ``Enquiries.halves``; migration
# 0018): those asked with its NHS number, and those answered with one of its entries,
# each walked newest first with its tie-break, so that a page stops when it is full.
Index(
    "ix_audit_events_lookups_asked_nhs_number_index_time",
    AskedNhsNumber(_EVENTS.query),
    IndexTime(_EVENTS.occurred_at),
    _EVENTS.id,
    sqlite_where=text(LOOKUPS),
    postgresql_where=text(LOOKUPS),
)
Index(
    "ix_audit_events_lookups_entry_id_index_time",
    _EVENTS.entry_id,
    IndexTime(_EVENTS.occurred_at),
    _EVENTS.id,
    sqlite_where=text(ENTRY_LOOKUPS),
    postgresql_where=text(ENTRY_LOOKUPS),
)


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
    # An authority's linked events newest first, by the event's time (migration 0016).
    __table_args__ = (
        Index(
            "ix_audit_event_authorities_authority_id_occurred_at",
            "authority_id",
            "occurred_at",
            "event_id",
        ),
    )

    authority_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    event_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("audit_events.id"), primary_key=True)
    # The event's, copied by the trigger that writes the row: what a review's page walks
    # and filters the linked events by (migration 0016).
    occurred_at: Mapped[datetime]
    enquirer_id: Mapped[str | None] = mapped_column(String(64))
    organisation_id: Mapped[uuid.UUID | None]
    purpose: Mapped[str | None] = mapped_column(String(64))
