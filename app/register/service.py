"""Writing register entries: every change is a new immutable version and an audit event.

Functions add to the session; the caller commits once.
"""

import calendar
import uuid
from datetime import date
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.audit.models import AuditEvent
from app.db import utcnow
from app.register.identifiers import eighteenth_birthday, match_key
from app.register.models import Category, RegisterEntry, RegisterEntryVersion
from app.register.schemas import EntryCreate

FIRST_REVIEW_MONTHS = 3


def add_months(start: date, months: int) -> date:
    month_index = start.month - 1 + months
    year, month = start.year + month_index // 12, month_index % 12 + 1
    return date(year, month, min(start.day, calendar.monthrange(year, month)[1]))


def snapshot(entry: RegisterEntry) -> dict[str, Any]:
    """Every field of the entry as JSON, for its immutable version row."""
    values: dict[str, Any] = {}
    for column in RegisterEntry.__table__.columns:
        value = getattr(entry, column.key)
        values[column.key] = (
            value.isoformat()
            if isinstance(value, date)
            else str(value)
            if isinstance(value, uuid.UUID)
            else value
        )
    return values


def create_entry(
    session: AsyncSession,
    *,
    actor: str,
    authority_id: uuid.UUID,
    data: EntryCreate,
    reason: str = "initial child protection conference",
) -> RegisterEntry:
    child, mother = data.child, data.mother
    presenting = mother if data.unborn else child
    assert presenting is not None  # guaranteed by EntryCreate
    entry = RegisterEntry(
        id=uuid.uuid4(),
        authority_id=authority_id,
        version=1,
        subject_nhs_number=presenting.nhs_number,
        subject_match_key=match_key(
            presenting.given_name, presenting.family_name, presenting.date_of_birth
        ),
        unborn=data.unborn,
        child_nhs_number=child.nhs_number if child else None,
        child_given_name=child.given_name if child else None,
        child_family_name=child.family_name if child else None,
        child_date_of_birth=child.date_of_birth if child else None,
        adult_on=eighteenth_birthday(child.date_of_birth) if child else None,
        expected_delivery_date=data.expected_delivery_date,
        mother_nhs_number=mother.nhs_number if mother else None,
        mother_given_name=mother.given_name if mother else None,
        mother_family_name=mother.family_name if mother else None,
        mother_date_of_birth=mother.date_of_birth if mother else None,
        categories=[c.value for c in Category if c in data.categories],
        plan_start=data.plan_start,
        next_review=data.next_review or add_months(data.plan_start, FIRST_REVIEW_MONTHS),
        lead_professional=data.lead_professional,
        team_contact=data.team_contact,
        notes=data.notes,
        updated_at=utcnow(),
        updated_by=actor,
    )
    session.add(entry)
    _record_version(session, entry, actor=actor, reason=reason, event_type="register.entry_created")
    return entry


def end_entry(
    session: AsyncSession, entry: RegisterEntry, *, actor: str, ended_on: date, reason: str
) -> None:
    entry.ended_on = ended_on
    entry.end_reason = reason
    entry.version += 1
    entry.updated_at = utcnow()
    entry.updated_by = actor
    _record_version(session, entry, actor=actor, reason=reason, event_type="register.entry_ended")


def _record_version(
    session: AsyncSession, entry: RegisterEntry, *, actor: str, reason: str, event_type: str
) -> None:
    session.add(
        RegisterEntryVersion(
            entry_id=entry.id,
            version=entry.version,
            snapshot=snapshot(entry),
            changed_by=actor,
            change_reason=reason,
        )
    )
    session.add(
        AuditEvent(
            event_type=event_type,
            principal=actor,
            outcome="ok",
            entry_id=entry.id,
            entry_version=entry.version,
            authority_id=entry.authority_id,
            detail={"reason": reason},
        )
    )
