"""The register's rules between fields (app/register/rules.py), without a database:
each rule named by the field it is about, as of a fixed day."""

from datetime import date, timedelta

import pytest

from app.register.models import Category
from app.register.rules import (
    Problem,
    add_months,
    default_next_review,
    entry_problems,
    review_problems,
)
from app.register.schemas import EntryCreate, Person

TODAY = date(2026, 6, 15)


def _child(born: date) -> Person:
    return Person(given_name="Amara", family_name="Quinn", date_of_birth=born)


def _entry(**fields: object) -> EntryCreate:
    values: dict[str, object] = {
        "child": _child(date(2020, 1, 1)),
        "categories": [Category.neglect],
        "plan_start": TODAY - timedelta(days=30),
    }
    return EntryCreate.model_construct(**(values | fields))


def _locs(problems: list[Problem]) -> list[tuple[str, ...]]:
    return [problem.loc for problem in problems]


@pytest.mark.parametrize(
    ("start", "months", "expected"),
    [
        (date(2026, 1, 31), 1, date(2026, 2, 28)),
        (date(2024, 1, 31), 1, date(2024, 2, 29)),
        (date(2026, 11, 30), 3, date(2027, 2, 28)),
        (date(2026, 5, 15), -5, date(2025, 12, 15)),
        (date(9999, 12, 1), 1, date.max),
        (date(1, 1, 1), -1, date.min),
    ],
)
def test_add_months_keeps_the_day_or_takes_the_months_last(
    start: date, months: int, expected: date
) -> None:
    assert add_months(start, months) == expected


def test_the_first_review_is_due_3_months_after_the_start_later_ones_6_after_the_last() -> None:
    assert default_next_review(date(2026, 1, 10), None) == date(2026, 4, 10)
    assert default_next_review(date(2026, 1, 10), date(2026, 3, 1)) == date(2026, 9, 1)


def test_a_valid_entry_breaks_no_rule() -> None:
    assert entry_problems(_entry(), TODAY) == []


def test_a_plan_start_in_the_future_is_refused() -> None:
    assert _locs(entry_problems(_entry(plan_start=TODAY + timedelta(days=1)), TODAY)) == [
        ("plan_start",)
    ]


def test_a_child_born_in_the_future_is_told_to_be_entered_as_unborn() -> None:
    [problem] = entry_problems(_entry(child=_child(TODAY + timedelta(days=1))), TODAY)
    assert problem.loc == ("child", "date_of_birth")
    assert "unborn" in problem.msg


def test_a_child_of_18_at_the_plan_start_or_today_is_refused() -> None:
    at_start = entry_problems(
        _entry(child=_child(date(2008, 1, 1)), plan_start=date(2026, 2, 1)), TODAY
    )
    assert [p.msg for p in at_start] == ["the child was 18 or over at the plan start"]
    since = entry_problems(
        _entry(child=_child(date(2008, 3, 1)), plan_start=date(2026, 2, 1)), TODAY
    )
    assert [p.msg for p in since] == ["the child is 18 or over: plans end at 18"]


def test_a_plan_started_more_than_42_weeks_before_the_birth_is_refused() -> None:
    born = TODAY - timedelta(days=10)
    problems = entry_problems(
        _entry(child=_child(born), plan_start=born - timedelta(weeks=43)), TODAY
    )
    assert _locs(problems) == [("plan_start",)]


def _unborn(delivery: date, mother_born: date = date(1995, 1, 1)) -> EntryCreate:
    return _entry(
        child=None,
        mother=Person(given_name="Hana", family_name="Petrova", date_of_birth=mother_born),
        expected_delivery_date=delivery,
    )


def test_an_unborn_childs_delivery_date_is_after_the_start_and_within_42_weeks() -> None:
    assert entry_problems(_unborn(TODAY + timedelta(weeks=10)), TODAY) == []
    before = entry_problems(_unborn(TODAY - timedelta(days=40)), TODAY)
    assert _locs(before) == [("expected_delivery_date",)]
    assert "record the birth" in before[0].msg
    far = entry_problems(_unborn(TODAY + timedelta(weeks=43)), TODAY)
    assert _locs(far) == [("expected_delivery_date",)]


def test_a_mother_is_born_in_the_past_and_at_least_10_at_the_delivery() -> None:
    delivery = TODAY + timedelta(weeks=10)
    future = entry_problems(_unborn(delivery, TODAY + timedelta(days=1)), TODAY)
    assert [p.msg for p in future] == ["the date of birth is in the future"]
    young = entry_problems(_unborn(delivery, delivery - timedelta(days=9 * 365)), TODAY)
    assert _locs(young) == [("mother", "date_of_birth")]
    assert "under 10" in young[0].msg


@pytest.mark.parametrize(
    ("last_review", "next_review", "loc", "words"),
    [
        (date(2026, 1, 1), None, ("last_review",), "before the plan start"),
        (TODAY + timedelta(days=1), None, ("last_review",), "in the future"),
        (None, date(2026, 2, 1), ("next_review",), "after the plan start"),
        (None, date(2026, 5, 2), ("next_review",), "3 months after the plan start"),
        (date(2026, 3, 1), date(2026, 3, 1), ("next_review",), "after the last review"),
        (date(2026, 3, 1), date(2026, 9, 2), ("next_review",), "6 months after the last review"),
    ],
)
def test_review_timing(
    last_review: date | None, next_review: date | None, loc: tuple[str, ...], words: str
) -> None:
    [problem] = review_problems(date(2026, 2, 1), last_review, next_review, TODAY)
    assert problem.loc == loc
    assert words in problem.msg


def test_reviews_within_their_limits_are_accepted() -> None:
    start = date(2026, 2, 1)
    assert review_problems(start, None, None, TODAY) == []
    assert review_problems(start, None, date(2026, 5, 1), TODAY) == []
    assert review_problems(start, date(2026, 3, 1), date(2026, 9, 1), TODAY) == []


def test_a_problem_names_its_field_never_the_value() -> None:
    problem = Problem(("child", "date_of_birth"), "the date of birth is in the future")
    assert problem.as_error() == {
        "loc": ["child", "date_of_birth"],
        "msg": "the date of birth is in the future",
        "type": "register_rule",
    }
