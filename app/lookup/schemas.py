"""The lookup request and its need-to-know answer."""

import uuid
from datetime import date
from enum import StrEnum
from typing import Annotated, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

from app.register.identifiers import check_name, normalise_nhs_number
from app.register.models import Category

Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
Name = Annotated[str, StringConstraints(max_length=100), AfterValidator(check_name)]
NhsNumber = Annotated[str, StringConstraints(max_length=14), AfterValidator(normalise_nhs_number)]


def _not_in_future(value: date) -> date:
    if value > date.today() or value.year < 1900:
        raise ValueError("must be a real date in the past")
    return value


class Purpose(StrEnum):
    unscheduled_care = "unscheduled_care"
    out_of_hours_referral = "out_of_hours_referral"
    police_investigation = "police_investigation"
    safeguarding_concern = "safeguarding_concern"


class Subject(BaseModel):
    """The person who presents: a child, or a pregnant woman (for an unborn child's plan).

    Either a valid NHS number (optionally with names or date of birth to
    cross-check), or given name + family name + date of birth.
    """

    model_config = ConfigDict(extra="forbid", strict=True)

    nhs_number: NhsNumber | None = None
    given_name: Name | None = None
    family_name: Name | None = None
    date_of_birth: Annotated[date, AfterValidator(_not_in_future)] | None = None

    @model_validator(mode="after")
    def _names_one_child(self) -> Self:
        has_demographics = all((self.given_name, self.family_name, self.date_of_birth))
        if self.nhs_number is None and not has_demographics:
            raise ValueError("give an NHS number, or given name, family name and date of birth")
        return self


class Enquirer(BaseModel):
    """The member of staff who asked, named by a system client."""

    model_config = ConfigDict(extra="forbid", strict=True)

    id: Annotated[Text, Field(max_length=64)]
    name: Annotated[Text, Field(max_length=200)]
    role: Annotated[Text, Field(max_length=100)]


class LookupRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    subject: Subject
    purpose: Purpose
    reason: Annotated[Text, Field(min_length=3, max_length=500)]
    enquirer: Enquirer | None = None


class Contact(BaseModel):
    name: str
    phone: str


class LookupAnswer(BaseModel):
    """Everything a lookup ever discloses; ``categories`` and ``unborn`` only when on a plan."""

    lookup_id: uuid.UUID
    status: Literal["on_plan", "not_on_plan", "refer_to_custodian"]
    categories: list[Category] | None = None
    unborn: bool | None = None
    contact: Contact
