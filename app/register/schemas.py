"""What a custodian sends to put a child on the register."""

from datetime import date
from typing import Annotated, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from app.register.identifiers import check_name, normalise_nhs_number
from app.register.models import Category

Name = Annotated[str, Field(max_length=100), AfterValidator(check_name)]
NhsNumber = Annotated[str, Field(max_length=14), AfterValidator(normalise_nhs_number)]


class Person(BaseModel):
    model_config = ConfigDict(extra="forbid")

    nhs_number: NhsNumber | None = None
    given_name: Name
    family_name: Name
    date_of_birth: date


class EntryCreate(BaseModel):
    """A child (or, for an unborn child, the mother and the expected delivery date)."""

    model_config = ConfigDict(extra="forbid")

    child: Person | None = None
    mother: Person | None = None
    expected_delivery_date: date | None = None
    categories: Annotated[list[Category], Field(min_length=1)]
    plan_start: date
    next_review: date | None = None
    lead_professional: Annotated[str, Field(max_length=200)] | None = None
    team_contact: Annotated[str, Field(max_length=200)] | None = None
    notes: Annotated[str, Field(max_length=10_000)] | None = None

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
