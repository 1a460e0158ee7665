"""Reading the register: every statement about a custodian's entries starts here.

``own_entries`` is the one place the tenant filter is written. Another authority's
entry is never selected, so it can never be returned, counted, changed, exported or
taken for a duplicate by mistake: it is "not found" (app/register/deps.py).
"""

from datetime import date
from typing import Any, Literal

from sqlalchemy import ColumnElement, Select, and_, func, not_, or_, select

from app.auth.principals import Principal
from app.register.identifiers import match_key
from app.register.models import RegisterEntry
from app.register.schemas import EntrySearch

StatusFilter = Literal["active", "ended", "all"]


def live(today: date) -> ColumnElement[bool]:
    """Entries that are still plans: not ended, and the child not yet 18."""
    return and_(
        RegisterEntry.ended_on.is_(None),
        or_(RegisterEntry.adult_on.is_(None), RegisterEntry.adult_on > today),
    )


def own_entries(custodian: Principal) -> Select[RegisterEntry]:
    """The entries of the custodian's own authority, and no other's."""
    return select(RegisterEntry).where(RegisterEntry.authority_id == custodian.organisation_id)


def only(statement: Select[Any], *columns: Any) -> Select[Any]:
    """``statement`` (one of :func:`own_entries`) selecting ``columns`` instead, its
    filters kept: ``only(own_entries(c), RegisterEntry.id)``."""
    return statement.with_only_columns(*columns, maintain_column_froms=True)


def count_of(statement: Select[Any]) -> Select[int]:
    """How many rows ``statement`` selects."""
    return only(statement.order_by(None), func.count())


def listed(
    custodian: Principal, status: StatusFilter, overdue: bool | None, today: date
) -> Select[RegisterEntry]:
    """The custodian's entries by status (live plans, ended ones, or all) and, when
    ``overdue`` is given, whether a live plan's review date has passed."""
    statement = own_entries(custodian)
    if status == "active":
        statement = statement.where(live(today))
    elif status == "ended":
        statement = statement.where(not_(live(today)))
    if overdue is not None:
        is_overdue = and_(live(today), RegisterEntry.next_review < today)
        statement = statement.where(is_overdue if overdue else not_(is_overdue))
    return statement


def for_person(custodian: Principal, search: EntrySearch) -> Select[RegisterEntry]:
    """The custodian's entries, live or ended, for one person: by NHS number (as the
    child, the mother or the person presenting), or by names and date of birth."""
    if search.nhs_number is not None:
        person = or_(
            RegisterEntry.subject_nhs_number == search.nhs_number,
            RegisterEntry.child_nhs_number == search.nhs_number,
            RegisterEntry.mother_nhs_number == search.nhs_number,
        )
    else:
        assert search.given_name is not None
        assert search.family_name is not None
        assert search.date_of_birth is not None
        person = RegisterEntry.subject_match_key == match_key(
            search.given_name, search.family_name, search.date_of_birth
        )
    return own_entries(custodian).where(person)
