"""What custodians send to keep the register, and what they read back."""

import uuid
from datetime import date, datetime
from typing import Annotated, Any, Literal, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from app.register.identifiers import check_name, normalise_nhs_number
from app.register.models import Category, EndReason

Name = Annotated[str, Field(max_length=100), AfterValidator(check_name)]
NhsNumber = Annotated[str, Field(max_length=14), AfterValidator(normalise_nhs_number)]
Text200 = Annotated[str, Field(max_length=200)]
Notes = Annotated[str, Field(max_length=10_000)]
Reason = Annotated[
    str, Field(min_length=3, max_length=500, description="Why: kept with the new version.")
]


class Person(BaseModel):
    model_config = ConfigDict(extra="forbid")

    nhs_number: NhsNumber | None = None
    given_name: Name
    family_name: Name
    date_of_birth: date


class EntryCreate(BaseModel):
    """A child (or, for an unborn child, the mother and the expected delivery date).

    Shape only; the rules between fields (ages, dates, review timing) are in
    ``app/register/rules.py`` so that the API and the CSV import apply one set.
    """

    model_config = ConfigDict(extra="forbid")

    child: Person | None = None
    mother: Person | None = None
    expected_delivery_date: date | None = None
    categories: Annotated[list[Category], Field(min_length=1)]
    plan_start: date
    next_review: date | None = Field(
        default=None,
        description="Defaults to plan start + 3 months, or last review + 6 months.",
    )
    last_review: date | None = Field(
        default=None, description="The last review conference held, for a plan already running."
    )
    lead_professional: Text200 | None = None
    team_contact: Text200 | None = None
    notes: Notes | None = None

    @model_validator(mode="after")
    def _child_or_unborn(self) -> Self:
        if self.child is None and (self.mother is None or self.expected_delivery_date is None):
            raise ValueError(
                "give the child, or for an unborn child the mother and expected delivery date"
            )
        if self.child is not None and self.expected_delivery_date is not None:
            raise ValueError("a born child has no expected delivery date")
        return self

    @property
    def unborn(self) -> bool:
        return self.child is None


class EntryChange(BaseModel):
    """A correction or update: only the fields sent change; ``reason`` is required."""

    model_config = ConfigDict(extra="forbid")

    reason: Reason
    child: Person | None = None
    mother: Person | None = None
    expected_delivery_date: date | None = None
    categories: Annotated[list[Category], Field(min_length=1)] | None = None
    plan_start: date | None = None
    next_review: date | None = None
    lead_professional: Text200 | None = None
    team_contact: Text200 | None = None
    notes: Notes | None = None

    @model_validator(mode="after")
    def _something_changes(self) -> Self:
        if not self.model_fields_set - {"reason"}:
            raise ValueError("name at least one field to change")
        for required in ("categories", "plan_start", "next_review"):
            if required in self.model_fields_set and getattr(self, required) is None:
                raise ValueError(f"{required} cannot be removed")
        return self


class ReviewRecord(BaseModel):
    """A review conference held; the plan continues."""

    model_config = ConfigDict(extra="forbid")

    held_on: date
    next_review: date | None = Field(
        default=None, description="Defaults to 6 months after the review; never later."
    )
    note: Annotated[str, Field(max_length=500)] | None = None


class EntryEnd(BaseModel):
    """De-registration, on one of DESIGN.md's grounds."""

    model_config = ConfigDict(extra="forbid")

    reason: EndReason
    ended_on: date
    note: Annotated[str, Field(max_length=500)] | None = None


class BirthRecord(BaseModel):
    """An unborn child's birth: the entry becomes the child's."""

    model_config = ConfigDict(extra="forbid")

    child: Person
    note: Annotated[str, Field(max_length=500)] | None = None


class EntrySearch(BaseModel):
    """Find your authority's entries for one person (identifiers in the body, never the URL):
    by NHS number, or by given name, family name and date of birth."""

    model_config = ConfigDict(extra="forbid")

    nhs_number: NhsNumber | None = None
    given_name: Name | None = None
    family_name: Name | None = None
    date_of_birth: date | None = None

    @model_validator(mode="after")
    def _one_way_to_identify(self) -> Self:
        names = (self.given_name, self.family_name, self.date_of_birth)
        if self.nhs_number is None and None in names:
            raise ValueError("give an NHS number, or given name, family name and date of birth")
        return self


class PersonRead(BaseModel):
    nhs_number: str | None
    given_name: str
    family_name: str
    date_of_birth: date


class EntryRead(BaseModel):
    """Everything the register holds on one plan: for its own custodians only."""

    id: uuid.UUID
    version: int
    authority_id: uuid.UUID
    status: Literal["active", "ended"]
    unborn: bool
    child: PersonRead | None
    mother: PersonRead | None
    expected_delivery_date: date | None
    categories: list[Category]
    plan_start: date
    next_review: date
    last_review: date | None
    review_overdue: bool
    lead_professional: str | None
    team_contact: str | None
    notes: str | None
    ended_on: date | None
    end_reason: EndReason | None
    updated_at: datetime
    updated_by: str


class EntryPage(BaseModel):
    items: list[EntryRead]
    count: int = Field(description="How many entries match the filters, on every page.")
    next_cursor: str | None = Field(description="Pass back as `cursor`; null on the last page.")


class VersionRead(BaseModel):
    version: int
    changed_at: datetime
    changed_by: str
    reason: str
    entry: EntryRead = Field(description="The entry as it stood after this change.")


class ImportResult(BaseModel):
    import_id: uuid.UUID
    imported: int
    sha256: str = Field(description="Of the file as received: quote it to match the audit log.")


def person_read(prefix: str, values: dict[str, Any]) -> PersonRead | None:
    if values.get(f"{prefix}_given_name") is None:
        return None
    return PersonRead(
        nhs_number=values[f"{prefix}_nhs_number"],
        given_name=values[f"{prefix}_given_name"],
        family_name=values[f"{prefix}_family_name"],
        date_of_birth=values[f"{prefix}_date_of_birth"],
    )
