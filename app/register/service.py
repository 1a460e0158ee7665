"""Writing register entries: every change is a new immutable version and an audit event.

Functions add to the session; the caller commits once. The write sequences
(app/register/writes.py) check ``rules.py`` and :func:`live_duplicate` first.
"""

import uuid
from dataclasses import dataclass
from datetime import date
from typing import Any

from fastapi import Request
from sqlalchemy import and_, or_, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement

from app.audit.models import AuditEvent
from app.audit.service import request_context
from app.auth.principals import Principal
from app.db import utcnow
from app.register.identifiers import eighteenth_birthday, match_key
from app.register.models import (
    END_REASON_WORDS,
    Category,
    EndReason,
    RegisterEntry,
    RegisterEntryVersion,
)
from app.register.queries import live, only, own_entries
from app.register.rules import default_next_review
from app.register.schemas import EntryCreate, Person

_COLUMNS = tuple(RegisterEntry.__table__.columns)
_NOT_JSON = (date, uuid.UUID)  # date covers datetime
# pg_advisory_xact_lock(class, key): the two-key form never meets the sequencer's one-key lock.
_REGISTER_LOCK_CLASS = 7201


@dataclass(frozen=True)
class Actor:
    """Who makes a change, and from where: for the version row and the audit event."""

    subject: str
    organisation_id: uuid.UUID | None = None
    request_id: str | None = None
    source_address: str | None = None


def actor_of(request: Request, custodian: Principal) -> Actor:
    """The custodian making a change through ``request``."""
    context = request_context(request)
    return Actor(
        subject=custodian.subject,
        organisation_id=custodian.organisation_id,
        request_id=context["request_id"],
        source_address=context["source_address"],
    )


def entry_values(data: EntryCreate) -> dict[str, Any]:
    """The columns an entry's identifiers and plan details set."""
    child, mother = data.child, data.mother
    presenting = mother if data.unborn else child
    assert presenting is not None  # guaranteed by EntryCreate

    def person(prefix: str, who: Person | None) -> dict[str, Any]:
        return {
            f"{prefix}_nhs_number": who.nhs_number if who else None,
            f"{prefix}_given_name": who.given_name if who else None,
            f"{prefix}_family_name": who.family_name if who else None,
            f"{prefix}_date_of_birth": who.date_of_birth if who else None,
        }

    return {
        "subject_nhs_number": presenting.nhs_number,
        "subject_match_key": match_key(
            presenting.given_name, presenting.family_name, presenting.date_of_birth
        ),
        "unborn": data.unborn,
        **person("child", child),
        **person("mother", mother),
        "adult_on": eighteenth_birthday(child.date_of_birth) if child else None,
        "expected_delivery_date": data.expected_delivery_date,
        "categories": [c.value for c in Category if c in data.categories],
        "plan_start": data.plan_start,
        "last_review": data.last_review,
        "next_review": data.next_review or default_next_review(data.plan_start, data.last_review),
        "lead_professional": data.lead_professional,
        "team_contact": data.team_contact,
        "notes": data.notes,
    }


def entry_data(entry: RegisterEntry) -> EntryCreate:
    """The entry as the custodian would send it: the base a change is merged into."""

    def person(prefix: str) -> Person | None:
        if getattr(entry, f"{prefix}_given_name") is None:
            return None
        return Person(
            nhs_number=getattr(entry, f"{prefix}_nhs_number"),
            given_name=getattr(entry, f"{prefix}_given_name"),
            family_name=getattr(entry, f"{prefix}_family_name"),
            date_of_birth=getattr(entry, f"{prefix}_date_of_birth"),
        )

    return EntryCreate(
        child=person("child"),
        mother=person("mother"),
        expected_delivery_date=entry.expected_delivery_date,
        categories=[Category(c) for c in entry.categories],
        plan_start=entry.plan_start,
        next_review=entry.next_review,
        last_review=entry.last_review,
        lead_professional=entry.lead_professional,
        team_contact=entry.team_contact,
        notes=entry.notes,
    )


async def lock_register(session: AsyncSession, authority_id: uuid.UUID) -> None:
    """Serialise writers to one authority's register until the transaction ends, so two
    creates of the same child cannot both pass the duplicate check. (SQLite's write
    transactions are already serial.)"""
    if session.get_bind().dialect.name == "postgresql":
        await session.execute(
            text("SELECT pg_advisory_xact_lock(:class, hashtext(:key))"),
            {"class": _REGISTER_LOCK_CLASS, "key": str(authority_id)},
        )


def same_child(values: dict[str, Any]) -> ColumnElement[bool]:
    """The same person presenting: the same NHS number, or the same names and date of
    birth unless both have NHS numbers that differ."""
    nhs, key = values["subject_nhs_number"], values["subject_match_key"]
    same_key = RegisterEntry.subject_match_key == key
    if nhs is None:
        return same_key
    return or_(
        RegisterEntry.subject_nhs_number == nhs,
        and_(same_key, RegisterEntry.subject_nhs_number.is_(None)),
    )


async def live_duplicate(
    session: AsyncSession,
    custodian: Principal,
    data: EntryCreate,
    today: date,
    *,
    excluding: uuid.UUID | None = None,
) -> uuid.UUID | None:
    """The id of another live plan of the custodian's authority for the same child, if any."""
    values = entry_values(data)
    statement = only(own_entries(custodian), RegisterEntry.id).where(
        RegisterEntry.unborn == values["unborn"],
        live(today),
        same_child(values),
    )
    if excluding is not None:
        statement = statement.where(RegisterEntry.id != excluding)
    return (await session.execute(statement.limit(1))).scalar_one_or_none()


def create_entry(
    session: AsyncSession,
    *,
    actor: Actor,
    authority_id: uuid.UUID,
    data: EntryCreate,
    reason: str = "initial child protection conference",
) -> RegisterEntry:
    entry = RegisterEntry(
        id=uuid.uuid4(),
        authority_id=authority_id,
        version=1,
        updated_at=utcnow(),
        updated_by=actor.subject,
        **entry_values(data),
    )
    session.add(entry)
    _record_version(session, entry, actor=actor, reason=reason, event_type="register.entry_created")
    return entry


def change_entry(
    session: AsyncSession, entry: RegisterEntry, *, actor: Actor, data: EntryCreate, reason: str
) -> None:
    for column, value in entry_values(data).items():
        setattr(entry, column, value)
    _new_version(session, entry, actor=actor, reason=reason, event_type="register.entry_changed")


def record_review(
    session: AsyncSession,
    entry: RegisterEntry,
    *,
    actor: Actor,
    held_on: date,
    next_review: date | None,
    note: str | None,
) -> None:
    entry.last_review = held_on
    entry.next_review = next_review or default_next_review(entry.plan_start, held_on)
    reason = f"review conference held {held_on:%d/%m/%Y}" + (f": {note}" if note else "")
    _new_version(session, entry, actor=actor, reason=reason, event_type="register.entry_reviewed")


def end_entry(
    session: AsyncSession,
    entry: RegisterEntry,
    *,
    actor: Actor,
    ended_on: date,
    reason: str,
    note: str | None = None,
) -> None:
    entry.ended_on = ended_on
    entry.end_reason = EndReason(reason).value
    grounds = END_REASON_WORDS[EndReason(reason).value]
    because = f"plan ended: {grounds}" + (f": {note}" if note else "")
    _new_version(session, entry, actor=actor, reason=because, event_type="register.entry_ended")


def record_birth(
    session: AsyncSession,
    entry: RegisterEntry,
    *,
    actor: Actor,
    data: EntryCreate,
    note: str | None,
) -> None:
    """The entry becomes the born child's: lookups now match the child, not the mother."""
    for column, value in entry_values(data).items():
        setattr(entry, column, value)
    reason = "birth recorded" + (f": {note}" if note else "")
    _new_version(session, entry, actor=actor, reason=reason, event_type="register.birth_recorded")


def _new_version(
    session: AsyncSession, entry: RegisterEntry, *, actor: Actor, reason: str, event_type: str
) -> None:
    entry.version += 1
    entry.updated_at = utcnow()
    entry.updated_by = actor.subject
    _record_version(session, entry, actor=actor, reason=reason, event_type=event_type)


def snapshot(entry: RegisterEntry) -> dict[str, Any]:
    """Every field of the entry as JSON, for its immutable version row."""
    return snapshot_of({column.key: getattr(entry, column.key) for column in _COLUMNS})


def snapshot_of(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with dates and ids as the strings JSON holds."""
    return {
        key: (value.isoformat() if isinstance(value, date) else str(value))
        if isinstance(value, _NOT_JSON)
        else value
        for key, value in values.items()
    }


def _record_version(
    session: AsyncSession, entry: RegisterEntry, *, actor: Actor, reason: str, event_type: str
) -> None:
    session.add(
        RegisterEntryVersion(
            entry_id=entry.id,
            version=entry.version,
            snapshot=snapshot(entry),
            changed_at=entry.updated_at,
            changed_by=actor.subject,
            change_reason=reason,
        )
    )
    session.add(
        AuditEvent(
            event_type=event_type,
            principal=actor.subject,
            organisation_id=actor.organisation_id,
            request_id=actor.request_id,
            source_address=actor.source_address,
            outcome="ok",
            entry_id=entry.id,
            entry_version=entry.version,
            authority_id=entry.authority_id,
            detail={"reason": reason},
        )
    )
