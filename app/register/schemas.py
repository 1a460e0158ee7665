"""What custodians send to keep the register, and what they read back."""

import re
import uuid
from datetime import date, datetime, timedelta
from typing import Annotated, Any, Literal, Self

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from app.register.identifiers import check_name, normalise_nhs_number
from app.register.models import Category, EndReason

# The one window for every date the register holds or is asked about. Nobody on it, or
# their mother, was born before 1900; every real plan date is at most months ahead (an
# expected delivery within 42 weeks, a review within 6 months: app/register/rules.py).
# Outside it a date is a slip or a probe, and it would take the rules' date arithmetic
# near the calendar's end, so it is refused by the schema, naming the field.
EARLIEST_DATE = date(1900, 1, 1)
LATEST_AHEAD = timedelta(days=5 * 366)
_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def plausible_date(value: date, today: date) -> date:
    """``value`` when it lies in the register's window as of ``today``; else ValueError."""
    if not EARLIEST_DATE <= value <= today + LATEST_AHEAD:
        raise ValueError(
            f"must be a date from {EARLIEST_DATE.isoformat()} to "
            f"{(today + LATEST_AHEAD).isoformat()}"
        )
    return value


def _iso_date_only(value: object) -> object:
    """A date as YYYY-MM-DD, nothing looser: pydantic would also take 0 (1970-01-01), a
    timestamp or a midnight datetime, none of which a custodian means as a date."""
    if value is None or value == "":
        raise ValueError("is needed: a date")  # an empty cell or field, not a wrong one
    if isinstance(value, datetime) or not isinstance(value, (str, date)):
        raise ValueError("must be a date as YYYY-MM-DD")
    if isinstance(value, str) and not _ISO_DATE.fullmatch(value):
        raise ValueError("must be a date as YYYY-MM-DD")
    return value


def _plausible_today(value: date) -> date:
    return plausible_date(value, date.today())


RegisterDate = Annotated[date, BeforeValidator(_iso_date_only), AfterValidator(_plausible_today)]

# Tab, line feed and carriage return are text; every other control character is not.
_TEXT_CONTROLS = frozenset(chr(c) for c in (*range(0x20), 0x7F) if chr(c) not in "\t\n\r")


def storable_text(value: str) -> str:
    """Free text as both databases can keep it: PostgreSQL refuses NUL in text, and a
    lone surrogate (JSON's ``"\\ud800"``) cannot be written as UTF-8 at all."""
    if any(c in _TEXT_CONTROLS or "\ud800" <= c <= "\udfff" for c in value):
        raise ValueError("must not contain control characters or unpaired surrogates")
    return value


Name = Annotated[str, Field(max_length=100), AfterValidator(check_name)]
NhsNumber = Annotated[str, Field(max_length=14), AfterValidator(normalise_nhs_number)]
Text200 = Annotated[str, Field(max_length=200), AfterValidator(storable_text)]
Notes = Annotated[str, Field(max_length=10_000), AfterValidator(storable_text)]
Note = Annotated[str, Field(max_length=500), AfterValidator(storable_text)]
Reason = Annotated[
    str,
    Field(min_length=3, max_length=500, description="Why: kept with the new version."),
    AfterValidator(storable_text),
]


class Person(BaseModel):
    model_config = ConfigDict(extra="forbid")

    nhs_number: NhsNumber | None = None
    given_name: Name
    family_name: Name
    date_of_birth: RegisterDate


class EntryCreate(BaseModel):
    """A child (or, for an unborn child, the mother and the expected delivery date).

    Shape only; the rules between fields (ages, dates, review timing) are in
    ``app/register/rules.py`` so that the API and the CSV import apply one set.
    """

    model_config = ConfigDict(extra="forbid")

    child: Person | None = None
    mother: Person | None = None
    expected_delivery_date: RegisterDate | None = None
    categories: Annotated[list[Category], Field(min_length=1)]
    plan_start: RegisterDate
    next_review: RegisterDate | None = Field(
        default=None,
        description="Defaults to plan start + 3 months, or last review + 6 months.",
    )
    last_review: RegisterDate | None = Field(
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
    expected_delivery_date: RegisterDate | None = None
    categories: Annotated[list[Category], Field(min_length=1)] | None = None
    plan_start: RegisterDate | None = None
    next_review: RegisterDate | None = None
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

    held_on: RegisterDate
    next_review: RegisterDate | None = Field(
        default=None, description="Defaults to 6 months after the review; never later."
    )
    note: Note | None = None


class EntryEnd(BaseModel):
    """De-registration, on one of the recorded grounds (README, "Keeping the register")."""

    model_config = ConfigDict(extra="forbid")

    reason: EndReason
    ended_on: RegisterDate
    note: Note | None = None


class BirthRecord(BaseModel):
    """An unborn child's birth: the entry becomes the child's."""

    model_config = ConfigDict(extra="forbid")

    child: Person
    note: Note | None = None


class EntrySearch(BaseModel):
    """Find your authority's entries for one person (identifiers in the body, never the URL):
    by NHS number, or by given name, family name and date of birth."""

    model_config = ConfigDict(extra="forbid")

    nhs_number: NhsNumber | None = None
    given_name: Name | None = None
    family_name: Name | None = None
    date_of_birth: RegisterDate | None = None

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
