"""Finding the plan a lookup is about: a unique exact match or nothing.

Only live plans take part: an ended plan or a child who has turned 18 is
invisible here, so the answer cannot reveal that a past plan existed.
"""

import uuid
from dataclasses import dataclass
from datetime import date
from enum import StrEnum
from typing import Any

from sqlalchemy import Select, bindparam, or_, select

from app.db import HotConnection, HotStatement
from app.identity.models import Organisation
from app.register.models import Category, RegisterEntry


class Status(StrEnum):
    on_plan = "on_plan"
    not_on_plan = "not_on_plan"
    refer_to_custodian = "refer_to_custodian"


@dataclass(frozen=True)
class SubjectQuery:
    """Normalised identifiers of the person who presents."""

    nhs_number: str | None
    given_name: str | None
    family_name: str | None
    date_of_birth: date | None

    @property
    def match_key(self) -> str | None:
        if self.given_name and self.family_name and self.date_of_birth:
            return f"{self.given_name}|{self.family_name}|{self.date_of_birth.isoformat()}"
        return None

    def for_audit(self) -> dict[str, str | None]:
        return {
            "nhs_number": self.nhs_number,
            "given_name": self.given_name,
            "family_name": self.family_name,
            "date_of_birth": self.date_of_birth.isoformat() if self.date_of_birth else None,
        }

    def disagrees_with(self, entry_key: str) -> bool:
        """True when any identifier sent differs from the entry's."""
        given, family, dob = entry_key.split("|")
        sent = (
            self.given_name,
            self.family_name,
            self.date_of_birth.isoformat() if self.date_of_birth else None,
        )
        return any(
            mine is not None and mine != theirs
            for mine, theirs in zip(sent, (given, family, dob), strict=True)
        )


@dataclass(frozen=True)
class Candidate:
    entry_id: uuid.UUID
    version: int
    authority_id: uuid.UUID
    authority_contact_name: str
    authority_contact_phone: str
    subject_nhs_number: str | None
    subject_match_key: str
    categories: tuple[Category, ...]
    unborn: bool


@dataclass(frozen=True)
class Decision:
    status: Status
    candidates: tuple[Candidate, ...]

    @property
    def authority(self) -> Candidate | None:
        """The one responsible authority, when every candidate shares it."""
        if self.candidates and len({c.authority_id for c in self.candidates}) == 1:
            return self.candidates[0]
        return None


def _candidates_statement(*, by_nhs_number: bool, by_match_key: bool) -> Select[*tuple[Any, ...]]:
    conditions = []
    if by_nhs_number:
        conditions.append(RegisterEntry.subject_nhs_number == bindparam("nhs_number"))
    if by_match_key:
        conditions.append(RegisterEntry.subject_match_key == bindparam("match_key"))
    return (
        select(
            RegisterEntry.id,
            RegisterEntry.version,
            RegisterEntry.authority_id,
            Organisation.contact_name,
            Organisation.contact_phone,
            RegisterEntry.subject_nhs_number,
            RegisterEntry.subject_match_key,
            RegisterEntry.categories,
            RegisterEntry.unborn,
        )
        .join(Organisation, RegisterEntry.authority_id == Organisation.id)
        .where(
            or_(*conditions),
            RegisterEntry.ended_on.is_(None),
            or_(
                RegisterEntry.adult_on.is_(None),
                RegisterEntry.adult_on > bindparam("today", type_=RegisterEntry.adult_on.type),
            ),
        )
    )


# Built once, by which identifiers were sent (each its own plan on PostgreSQL).
_CANDIDATES = {
    (nhs, key): HotStatement(_candidates_statement(by_nhs_number=nhs, by_match_key=key))
    for nhs in (True, False)
    for key in (True, False)
    if nhs or key
}


async def find_candidates(
    connection: HotConnection, query: SubjectQuery, today: date
) -> list[Candidate]:
    match_key = query.match_key
    if not query.nhs_number and not match_key:
        return []
    statement = _CANDIDATES[(bool(query.nhs_number), bool(match_key))]
    rows = await connection.fetch(
        statement, {"nhs_number": query.nhs_number, "match_key": match_key, "today": today}
    )
    return [
        Candidate(
            entry_id=row["id"],
            version=row["version"],
            authority_id=row["authority_id"],
            authority_contact_name=row["contact_name"],
            authority_contact_phone=row["contact_phone"],
            subject_nhs_number=row["subject_nhs_number"],
            subject_match_key=row["subject_match_key"],
            categories=tuple(c for c in Category if c.value in row["categories"]),
            unborn=row["unborn"],
        )
        for row in rows
    ]


def decide(query: SubjectQuery, candidates: list[Candidate]) -> Decision:
    """on_plan only for one entry that agrees with everything sent.

    Several entries, or an NHS number whose entry disagrees with the names or
    date of birth sent (or names that match an entry under another NHS number),
    is for a custodian to resolve.
    """
    found = tuple(candidates)
    if not found:
        return Decision(Status.not_on_plan, ())
    if len(found) > 1:
        return Decision(Status.refer_to_custodian, found)
    entry = found[0]
    if query.nhs_number is not None and (
        entry.subject_nhs_number != query.nhs_number
        or query.disagrees_with(entry.subject_match_key)
    ):
        return Decision(Status.refer_to_custodian, found)
    return Decision(Status.on_plan, found)
