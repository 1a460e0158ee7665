"""Ended entries leave the register once the retention period has passed
(``cpr register purge-ended``; docs/audit-log.md, "Retention").

An entry that ended more than ``CPR_REGISTER_ENDED_RETENTION_DAYS`` ago (on its end
date, or on the child's 18th birthday, from which it is shown ended) is deleted with
every one of its versions, unless some other row still refers to it: every foreign key
to ``register_entries`` in the database itself is checked (today only the entry's own
versions have one), so a table added later keeps what it refers to without this module
changing. The deletion goes in bounded batches, one authority's entries each, each its
own transaction with its ``register.purged`` event: no entry leaves without its record,
and no lock is held for long. The audit events that name a purged entry keep its id;
it then resolves to nothing.

Only the schema owner can do it: ``cpr_app`` has no DELETE on either table, and the
database's guards (migration 0015) let the owner delete only an entry that is no
longer live, and a version only of such an entry deleted with it.
"""

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any, cast

import structlog
from sqlalchemy import (
    ColumnElement,
    CursorResult,
    and_,
    case,
    column,
    delete,
    exists,
    false,
    func,
    inspect,
    or_,
    select,
    table,
    text,
)
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit.models import AuditEvent
from app.identity.models import Organisation
from app.register.models import RegisterEntry, RegisterEntryVersion

PURGED = "register.purged"
ACTOR = "cli:register-purge-ended"
# Entries per transaction: each batch's ids are in its event, so this also bounds it.
BATCH_SIZE = 500
MAX_BATCH_SIZE = 1_000

log = structlog.get_logger()


@dataclass(frozen=True)
class Reference:
    """A foreign key to ``register_entries`` from another table (or another column)."""

    table: str
    columns: tuple[str, ...]
    referred: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"{self.table}.{','.join(self.columns)}"


@dataclass(frozen=True)
class AuthorityDue:
    """One authority's entries ended before the cut-off: how many may go, how many stay
    because another row refers to them."""

    authority_id: uuid.UUID
    authority: str
    due: int
    kept: int


@dataclass(frozen=True)
class Purged:
    """One batch deleted: what its event records."""

    authority_id: uuid.UUID
    entry_ids: list[uuid.UUID]
    versions: int


def cutoff(today: date, days: int) -> date:
    """Entries that ended before this day ended more than ``days`` days ago."""
    return today - timedelta(days=days)


async def references(session: AsyncSession) -> list[Reference]:
    """Every foreign key to ``register_entries`` the database holds, but the versions'
    own (which go with their entry)."""

    def reflect(connection: Connection) -> list[Reference]:
        inspector = inspect(connection)
        found = []
        for name in inspector.get_table_names():
            for key in inspector.get_foreign_keys(name):
                if key["referred_table"] != RegisterEntry.__tablename__:
                    continue
                reference = Reference(
                    name, tuple(key["constrained_columns"]), tuple(key["referred_columns"])
                )
                if (name, reference.columns) != (RegisterEntryVersion.__tablename__, ("entry_id",)):
                    found.append(reference)
        return found

    connection = await session.connection()
    return await connection.run_sync(reflect)


def _referred_to(reference: Reference) -> ColumnElement[bool]:
    """Some row of the referring table points at the entry."""
    referring = table(reference.table, *(column(name) for name in reference.columns)).alias()
    entries = RegisterEntry.__table__.c
    return exists().where(
        and_(
            *(
                referring.c[name] == entries[referred]
                for name, referred in zip(reference.columns, reference.referred, strict=True)
            )
        )
    )


def _referred(found: Sequence[Reference]) -> ColumnElement[bool]:
    return or_(*(_referred_to(reference) for reference in found)) if found else false()


def _ended_before(before: date) -> ColumnElement[bool]:
    """Ended before the day: on its recorded end date, or else on the child's 18th
    birthday (from which the entry is shown ended, app/register/reads.py)."""
    return or_(
        RegisterEntry.ended_on < before,
        and_(RegisterEntry.ended_on.is_(None), RegisterEntry.adult_on < before),
    )


async def survey(
    session: AsyncSession, before: date, found: Sequence[Reference]
) -> list[AuthorityDue]:
    """By authority: the entries ended before ``before``, to go and to stay."""
    referred = _referred(found)
    rows = await session.execute(
        select(
            RegisterEntry.authority_id,
            Organisation.name,
            func.count(),
            func.coalesce(func.sum(case((referred, 1), else_=0)), 0),
        )
        .join(Organisation, Organisation.id == RegisterEntry.authority_id)
        .where(_ended_before(before))
        .group_by(RegisterEntry.authority_id, Organisation.name)
        .order_by(Organisation.name, RegisterEntry.authority_id)
    )
    return [
        AuthorityDue(authority_id, name, int(total) - int(kept), int(kept))
        for authority_id, name, total, kept in rows
    ]


async def purge_batch(
    session: AsyncSession,
    authority_id: uuid.UUID,
    *,
    before: date,
    days: int,
    found: Sequence[Reference],
    batch_size: int = BATCH_SIZE,
    actor: str = ACTOR,
) -> Purged | None:
    """Delete up to ``batch_size`` of the authority's entries ended before ``before``
    that nothing refers to, with their versions, and write the ``register.purged``
    event that records them, in the session's transaction (the caller commits: the
    deletion and its record, or neither). None: nothing (more) to delete."""
    chosen = await session.scalars(
        select(RegisterEntry.id)
        .where(
            RegisterEntry.authority_id == authority_id,
            _ended_before(before),
            ~_referred(found),
        )
        .order_by(RegisterEntry.id)
        .limit(batch_size)
        .with_for_update()
    )
    ids = list(chosen)
    if not ids:
        return None
    entries = delete(RegisterEntry).where(RegisterEntry.id.in_(ids))
    versions = delete(RegisterEntryVersion).where(RegisterEntryVersion.entry_id.in_(ids))
    plain = {"synchronize_session": False}
    if (await session.connection()).dialect.name == "sqlite":
        # The entries first, then their versions (the guard lets a version go only once
        # its entry has): the foreign key is checked at the commit instead.
        await session.execute(text("PRAGMA defer_foreign_keys = ON"))
        await session.execute(entries, execution_options=plain)
        gone = cast(CursorResult[Any], await session.execute(versions, execution_options=plain))
    else:
        # Each version only of an ended entry, which must be gone by the commit.
        gone = cast(CursorResult[Any], await session.execute(versions, execution_options=plain))
        await session.execute(entries, execution_options=plain)
    purged = Purged(authority_id, ids, gone.rowcount)
    session.add(purged_event(purged, before=before, days=days, actor=actor))
    log.info(PURGED, authority_id=str(authority_id), entries=len(ids), versions=purged.versions)
    return purged


def purged_event(purged: Purged, *, before: date, days: int, actor: str) -> AuditEvent:
    """What the log records of a batch: the authority, the entry ids and counts, the
    period and its cut-off. Never a child's names, NHS number or date of birth."""
    return AuditEvent(
        event_type=PURGED,
        principal=actor,
        outcome="ok",
        authority_id=purged.authority_id,
        detail={
            "entry_ids": [str(entry_id) for entry_id in purged.entry_ids],
            "entries": len(purged.entry_ids),
            "versions": purged.versions,
            "retention_days": days,
            "ended_before": before.isoformat(),
        },
    )
