"""Register entries: the current state of each plan, and every version of it."""

import uuid
from datetime import date, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import ForeignKey, Index, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, utcnow


class Category(StrEnum):
    neglect = "neglect"
    physical_abuse = "physical_abuse"
    sexual_abuse = "sexual_abuse"
    emotional_abuse = "emotional_abuse"


# A category in words ("Physical abuse"), for whatever shows one to people (FHIR's displays).
CATEGORY_WORDS = {
    category.value: category.value.replace("_", " ").capitalize() for category in Category
}


class EndReason(StrEnum):
    no_longer_at_risk = "no_longer_at_risk"
    abusing_adult_left = "abusing_adult_left"
    looked_after = "looked_after"
    cared_for_by_relatives = "cared_for_by_relatives"
    reached_18 = "reached_18"
    died = "died"
    moved_out_of_area = "moved_out_of_area"
    transferred = "transferred"


# The grounds in words, for the end form and the entry's history.
END_REASON_WORDS = {
    EndReason.no_longer_at_risk.value: "No longer at risk of significant harm",
    EndReason.abusing_adult_left.value: "The adult posing the risk has left the household",
    EndReason.looked_after.value: "Now looked after by the local authority",
    EndReason.cared_for_by_relatives.value: "Now cared for by relatives",
    EndReason.reached_18.value: "Reached 18",
    EndReason.died.value: "Died",
    EndReason.moved_out_of_area.value: "Moved out of the area",
    EndReason.transferred.value: "Transferred to another authority",
}


class RegisterEntry(Base):
    """One child on one plan, as it stands now.

    ``subject_*`` columns hold the normalised identifiers of the person who
    presents: the child, or for an unborn child the mother. Lookups match on
    them and nothing else.
    """

    __tablename__ = "register_entries"
    __table_args__ = (
        Index("ix_register_entries_subject_nhs_number", "subject_nhs_number"),
        Index("ix_register_entries_subject_match_key", "subject_match_key"),
        # One live plan per person presenting (child, or mother of an unborn child) per
        # authority, whatever the service's own check misses (it also compares names and
        # dates of birth: service.same_child).
        Index(
            "uq_register_entries_live_nhs_number",
            "authority_id",
            "subject_nhs_number",
            "unborn",
            unique=True,
            sqlite_where=text("ended_on IS NULL AND subject_nhs_number IS NOT NULL"),
            postgresql_where=text("ended_on IS NULL AND subject_nhs_number IS NOT NULL"),
        ),
        # The custodian's list: live entries by review date.
        Index("ix_register_entries_authority_next_review", "authority_id", "next_review"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    authority_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organisations.id"), index=True)
    version: Mapped[int] = mapped_column(default=1)

    subject_nhs_number: Mapped[str | None] = mapped_column(String(10))
    subject_match_key: Mapped[str] = mapped_column(String(400))

    unborn: Mapped[bool] = mapped_column(default=False)
    child_nhs_number: Mapped[str | None] = mapped_column(String(10))
    child_given_name: Mapped[str | None] = mapped_column(String(100))
    child_family_name: Mapped[str | None] = mapped_column(String(100))
    child_date_of_birth: Mapped[date | None]
    expected_delivery_date: Mapped[date | None]
    mother_nhs_number: Mapped[str | None] = mapped_column(String(10))
    mother_given_name: Mapped[str | None] = mapped_column(String(100))
    mother_family_name: Mapped[str | None] = mapped_column(String(100))
    mother_date_of_birth: Mapped[date | None]
    # The child's 18th birthday: from then on the entry is never disclosed.
    adult_on: Mapped[date | None]

    categories: Mapped[list[str]]
    plan_start: Mapped[date]
    next_review: Mapped[date]
    last_review: Mapped[date | None]
    lead_professional: Mapped[str | None] = mapped_column(String(200))
    team_contact: Mapped[str | None] = mapped_column(String(200))
    notes: Mapped[str | None] = mapped_column(Text)
    ended_on: Mapped[date | None]
    end_reason: Mapped[str | None] = mapped_column(String(32))

    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_by: Mapped[str] = mapped_column(String(100))


class RegisterEntryVersion(Base):
    """Immutable snapshot written with every change (append-only in the database)."""

    __tablename__ = "register_entry_versions"

    entry_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("register_entries.id"), primary_key=True)
    version: Mapped[int] = mapped_column(primary_key=True)
    snapshot: Mapped[dict[str, Any]]
    changed_at: Mapped[datetime] = mapped_column(default=utcnow)
    changed_by: Mapped[str] = mapped_column(String(100))
    change_reason: Mapped[str] = mapped_column(String(500))
