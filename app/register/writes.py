"""Changing the register: each write as one sequence, the same for the API and the web
client. Check the rules, lock the authority's register, look for a duplicate, write
the new version with its audit event (app/register/service.py), save.

A change starts from an entry that ``load_entry(..., for_change=True)`` fetched (the
custodian's own, locked); the caller has checked the version it was made against.
Every refusal is a ProblemError with the API's status and code.
"""

from datetime import date, timedelta

import structlog
from fastapi import Request
from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit.service import audit_unavailable, commit_or_fail_closed
from app.auth.principals import Principal
from app.errors import ProblemError, safe_validation_errors
from app.register.models import RegisterEntry
from app.register.rules import Problem, entry_problems, review_problems
from app.register.schemas import BirthRecord, EntryChange, EntryCreate, EntryEnd, ReviewRecord
from app.register.service import (
    actor_of,
    change_entry,
    create_entry,
    end_entry,
    entry_data,
    live_duplicate,
    lock_register,
    record_birth,
    record_review,
)

# An unborn child's birth may be recorded from 20 weeks before the expected date to 6 after.
EARLIEST_BIRTH = timedelta(weeks=20)
LATEST_BIRTH = timedelta(weeks=6)


def refuse_problems(problems: list[Problem]) -> None:
    """422 ``invalid_entry`` naming every rule broken, if any."""
    if problems:
        raise ProblemError(
            422,
            "Invalid entry",
            "; ".join(p.msg for p in problems),
            code="invalid_entry",
            errors=[p.as_error() for p in problems],
        )


async def refuse_duplicate(
    session: AsyncSession,
    custodian: Principal,
    data: EntryCreate,
    today: date,
    excluding: RegisterEntry | None = None,
) -> None:
    """409 ``already_registered`` when the custodian's authority holds another live plan
    for the same child."""
    existing = await live_duplicate(
        session, custodian, data, today, excluding=excluding.id if excluding else None
    )
    if existing is not None:
        raise ProblemError(
            409,
            "Already on the register",
            f"An active entry for this child already exists in your register: {existing}.",
            code="already_registered",
            errors=[
                {"loc": [], "msg": "duplicate", "type": "duplicate", "entry_id": str(existing)}
            ],
        )


def require_live(entry: RegisterEntry, today: date) -> None:
    """409 ``plan_ended`` for an entry ended or of a child now 18: never reopened."""
    if entry.ended_on is not None or (entry.adult_on is not None and entry.adult_on <= today):
        raise ProblemError(
            409,
            "Plan ended",
            "This plan has ended and entries are never reopened: create a new entry.",
            code="plan_ended",
        )


log = structlog.get_logger()


async def save(session: AsyncSession) -> None:
    """Flush first: a unique index that catches a duplicate the checks missed is a 409.
    Then commit, the audit events with the change, or 503 (fail closed)."""
    try:
        await session.flush()
    except IntegrityError as exc:
        await session.rollback()
        if not _one_live_plan(exc):
            # Not the duplicate the index guards against: a write refused for another
            # reason (the log's own guard, say) is an outage, said as one (503).
            log.error("register_write_failed", error_type=type(exc.orig).__name__)
            raise audit_unavailable() from exc
        raise ProblemError(
            409,
            "Already on the register",
            "An active entry for this child already exists.",
            code="already_registered",
        ) from exc
    await commit_or_fail_closed(session)


# How each database names the one-live-plan index when it refuses a duplicate.
_LIVE_PLAN_INDEX = "uq_register_entries_live_nhs_number"
_SQLITE_LIVE_PLAN = (
    "UNIQUE constraint failed: register_entries.authority_id, "
    "register_entries.subject_nhs_number, register_entries.unborn"
)


def _one_live_plan(exc: IntegrityError) -> bool:
    """The refusal is the one-live-plan unique index's (PostgreSQL names the index;
    SQLite its columns), not any other constraint or trigger."""
    message = str(exc.orig)
    return _LIVE_PLAN_INDEX in message or _SQLITE_LIVE_PLAN in message


async def create(
    session: AsyncSession, request: Request, custodian: Principal, data: EntryCreate
) -> RegisterEntry:
    """Put a child on the custodian's register (``register.entry_created``)."""
    today = date.today()
    refuse_problems(entry_problems(data, today))
    await lock_register(session, custodian.organisation_id)
    await refuse_duplicate(session, custodian, data, today)
    entry = create_entry(
        session,
        actor=actor_of(request, custodian),
        authority_id=custodian.organisation_id,
        data=data,
    )
    await save(session)
    return entry


def changed_data(entry: RegisterEntry, change: EntryChange) -> EntryCreate:
    """The entry as it would be with ``change`` (only the fields it sets) applied."""
    changes = change.model_dump(exclude_unset=True, exclude={"reason"})
    if entry.unborn and "child" in changes:
        raise ProblemError(
            409,
            "Unborn child",
            "Record the birth (POST …/birth) to turn this entry into the child's.",
            code="unborn_child",
        )
    try:
        return EntryCreate.model_validate(entry_data(entry).model_dump() | changes)
    except ValidationError as exc:
        errors = safe_validation_errors(exc.errors())
        raise ProblemError(422, "Invalid entry", code="invalid_entry", errors=errors) from exc


async def change(
    session: AsyncSession,
    request: Request,
    custodian: Principal,
    entry: RegisterEntry,
    change: EntryChange,
) -> None:
    """Correct or update an entry (``register.entry_changed``)."""
    today = date.today()
    require_live(entry, today)
    data = changed_data(entry, change)
    refuse_problems(entry_problems(data, today))
    await refuse_duplicate(session, custodian, data, today, excluding=entry)
    change_entry(
        session, entry, actor=actor_of(request, custodian), data=data, reason=change.reason
    )
    await save(session)


async def review(
    session: AsyncSession,
    request: Request,
    custodian: Principal,
    entry: RegisterEntry,
    held: ReviewRecord,
) -> None:
    """Record a review conference held (``register.entry_reviewed``)."""
    today = date.today()
    require_live(entry, today)
    problems = [
        Problem(("held_on",) if p.loc == ("last_review",) else p.loc, p.msg)
        for p in review_problems(entry.plan_start, held.held_on, held.next_review, today)
    ]
    if entry.last_review is not None and held.held_on < entry.last_review:
        problems.append(Problem(("held_on",), "a later review is already recorded"))
    refuse_problems(problems)
    record_review(
        session,
        entry,
        actor=actor_of(request, custodian),
        held_on=held.held_on,
        next_review=held.next_review,
        note=held.note,
    )
    await save(session)


async def end(
    session: AsyncSession,
    request: Request,
    custodian: Principal,
    entry: RegisterEntry,
    ending: EntryEnd,
) -> None:
    """End a plan on recorded grounds (``register.entry_ended``)."""
    today = date.today()
    require_live(entry, today)
    problems = []
    if ending.ended_on > today:
        problems.append(Problem(("ended_on",), "a plan cannot be ended in advance"))
    if ending.ended_on < entry.plan_start:
        problems.append(Problem(("ended_on",), "the end date is before the plan start"))
    refuse_problems(problems)
    end_entry(
        session,
        entry,
        actor=actor_of(request, custodian),
        ended_on=ending.ended_on,
        reason=ending.reason.value,
        note=ending.note,
    )
    await save(session)


async def birth(
    session: AsyncSession,
    request: Request,
    custodian: Principal,
    entry: RegisterEntry,
    record: BirthRecord,
) -> None:
    """Record an unborn child's birth: the entry becomes the child's
    (``register.birth_recorded``)."""
    today = date.today()
    require_live(entry, today)
    if not entry.unborn:
        raise ProblemError(
            409, "Already born", "This entry is already a born child's.", code="already_born"
        )
    expected = entry.expected_delivery_date
    assert expected is not None
    born = record.child.date_of_birth
    problems = []
    if born <= today and not expected - EARLIEST_BIRTH <= born <= expected + LATEST_BIRTH:
        problems.append(
            Problem(
                ("child", "date_of_birth"),
                "more than 20 weeks before or 6 weeks after the expected delivery date: "
                "correct the expected date first if it was wrong",
            )
        )
    data = entry_data(entry).model_copy(
        update={"child": record.child, "expected_delivery_date": None}
    )
    problems += entry_problems(data, today)
    refuse_problems(problems)
    await refuse_duplicate(session, custodian, data, today, excluding=entry)
    record_birth(session, entry, actor=actor_of(request, custodian), data=data, note=record.note)
    await save(session)
