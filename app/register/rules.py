"""The register's rules between fields: one set for the API and the CSV import.

Each problem names the field it is about and never repeats the value sent
(it may be a child's identifier). The schema keeps dates within a plausible
window (``app/register/schemas.py``), and the rules hold for any date all the
same: they compare differences, which cannot overflow, and a month sum past
the calendar's end is the calendar's end.
"""

import calendar
from dataclasses import dataclass
from datetime import date, timedelta

from app.register.identifiers import eighteenth_birthday
from app.register.schemas import EntryCreate, Person

FIRST_REVIEW_MONTHS = 3
LATER_REVIEW_MONTHS = 6
# Full term is 40 weeks; 42 is the longest a pregnancy is allowed to run.
LONGEST_PREGNANCY = timedelta(weeks=42)
YOUNGEST_MOTHER_YEARS = 10


def add_months(start: date, months: int) -> date:
    """The same day ``months`` later, or the month's last day when it has none;
    ``date.min`` or ``date.max`` when that is beyond the calendar."""
    month_index = start.month - 1 + months
    year, month = start.year + month_index // 12, month_index % 12 + 1
    if year < date.min.year:
        return date.min
    if year > date.max.year:
        return date.max
    return date(year, month, min(start.day, calendar.monthrange(year, month)[1]))


def default_next_review(plan_start: date, last_review: date | None) -> date:
    if last_review is None:
        return add_months(plan_start, FIRST_REVIEW_MONTHS)
    return add_months(last_review, LATER_REVIEW_MONTHS)


@dataclass(frozen=True)
class Problem:
    loc: tuple[str, ...]
    msg: str

    def as_error(self) -> dict[str, object]:
        return {"loc": list(self.loc), "msg": self.msg, "type": "register_rule"}


def entry_problems(data: EntryCreate, today: date) -> list[Problem]:
    """Every rule ``data`` breaks, as of ``today``."""
    problems: list[Problem] = []
    if data.plan_start > today:
        problems.append(Problem(("plan_start",), "the plan start is in the future"))
    if data.child is not None:
        problems += _child_problems(data.child, data.plan_start, today)
    if data.mother is not None:
        problems += _mother_problems(data.mother, data.expected_delivery_date, today)
    if data.expected_delivery_date is not None:
        problems += _delivery_problems(data.expected_delivery_date, data.plan_start, today)
    problems += review_problems(data.plan_start, data.last_review, data.next_review, today)
    return problems


def _child_problems(child: Person, plan_start: date, today: date) -> list[Problem]:
    born = child.date_of_birth
    if born > today:
        return [
            Problem(
                ("child", "date_of_birth"),
                "the date of birth is in the future (for an unborn child give the mother "
                "and the expected delivery date)",
            )
        ]
    problems = []
    if eighteenth_birthday(born) <= plan_start:
        problems.append(
            Problem(("child", "date_of_birth"), "the child was 18 or over at the plan start")
        )
    elif eighteenth_birthday(born) <= today:
        problems.append(
            Problem(("child", "date_of_birth"), "the child is 18 or over: plans end at 18")
        )
    if born - plan_start > LONGEST_PREGNANCY:
        problems.append(
            Problem(("plan_start",), "the plan start is more than 42 weeks before the birth")
        )
    return problems


def _mother_problems(mother: Person, delivery: date | None, today: date) -> list[Problem]:
    born = mother.date_of_birth
    if born > today:
        return [Problem(("mother", "date_of_birth"), "the date of birth is in the future")]
    if delivery is not None and add_months(born, 12 * YOUNGEST_MOTHER_YEARS) > delivery:
        return [
            Problem(
                ("mother", "date_of_birth"),
                f"the mother would be under {YOUNGEST_MOTHER_YEARS} at the expected delivery",
            )
        ]
    return []


def _delivery_problems(delivery: date, plan_start: date, today: date) -> list[Problem]:
    if delivery < plan_start:
        return [
            Problem(
                ("expected_delivery_date",),
                "the expected delivery date is before the plan start: record the birth instead",
            )
        ]
    if delivery - plan_start > LONGEST_PREGNANCY or delivery - today > LONGEST_PREGNANCY:
        return [
            Problem(
                ("expected_delivery_date",),
                "the expected delivery date is more than 42 weeks away",
            )
        ]
    return []


def review_problems(
    plan_start: date, last_review: date | None, next_review: date | None, today: date
) -> list[Problem]:
    """The first review is due within 3 months of the plan start, later ones at most
    6 months apart (README, "Keeping the register")."""
    if last_review is not None:
        if last_review < plan_start:
            return [Problem(("last_review",), "the last review is before the plan start")]
        if last_review > today:
            return [Problem(("last_review",), "the last review is in the future")]
        after, months = last_review, LATER_REVIEW_MONTHS
    else:
        after, months = plan_start, FIRST_REVIEW_MONTHS
    if next_review is None:
        return []
    if next_review <= after:
        what = "last review" if last_review is not None else "plan start"
        return [Problem(("next_review",), f"the next review must be after the {what}")]
    if next_review > add_months(after, months):
        what = (
            "6 months after the last review"
            if last_review is not None
            else "3 months after the plan start"
        )
        return [Problem(("next_review",), f"the next review must be no later than {what}")]
    return []
