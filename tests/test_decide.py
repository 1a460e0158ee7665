"""decide(), without a database: the rule that an answer is on_plan only for one live
entry that agrees with everything the enquirer sent, and for a custodian to resolve
whenever the register cannot say which child it is."""

import uuid
from dataclasses import replace
from datetime import date

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.register.matching import Candidate, Status, SubjectQuery, decide
from app.register.models import Category

BORN = date(2019, 4, 2)
KEY = f"amara|quinn-lowe|{BORN.isoformat()}"
NHS = "9434765919"
AUTHORITY = uuid.uuid4()


def entry(**change: object) -> Candidate:
    base = Candidate(
        entry_id=uuid.uuid4(),
        version=1,
        authority_id=AUTHORITY,
        authority_contact_name="Authority A duty desk",
        authority_contact_phone="020 7946 0001",
        subject_nhs_number=NHS,
        subject_match_key=KEY,
        categories=(Category.neglect,),
        unborn=False,
    )
    return replace(base, **change)  # type: ignore[arg-type]


def asked(
    nhs: str | None = None,
    given: str | None = None,
    family: str | None = None,
    born: date | None = None,
) -> SubjectQuery:
    return SubjectQuery(nhs, given, family, born)


BY_NHS = asked(NHS)
BY_NAMES = asked(None, "amara", "quinn-lowe", BORN)


def test_no_candidate_is_not_on_plan_and_names_no_authority() -> None:
    decision = decide(BY_NHS, [])
    assert decision.status is Status.not_on_plan
    assert decision.authority is None


@pytest.mark.parametrize(
    "query",
    [BY_NHS, BY_NAMES, asked(NHS, "amara", "quinn-lowe", BORN), asked(NHS, "amara")],
    ids=["nhs", "names", "all", "nhs-and-given"],
)
def test_one_entry_that_agrees_with_everything_sent_is_on_plan(query: SubjectQuery) -> None:
    found = entry()
    decision = decide(query, [found])
    assert decision.status is Status.on_plan
    assert decision.authority == found


@pytest.mark.parametrize(
    "query",
    [
        asked(NHS, "amelia"),
        asked(NHS, None, "quinn"),
        asked(NHS, None, None, date(2001, 1, 1)),
        asked("9999999999"),
    ],
    ids=["given", "family", "born", "other-number"],
)
def test_an_nhs_number_whose_entry_disagrees_is_for_a_custodian(query: SubjectQuery) -> None:
    decision = decide(query, [entry()])
    assert decision.status is Status.refer_to_custodian
    assert decision.authority is not None  # one authority: its contact is given


def test_names_alone_never_disagree_with_the_entry_found_by_them() -> None:
    # Matching by names found it through the match key: no NHS number to disagree with.
    assert decide(BY_NAMES, [entry(subject_nhs_number="9999999999")]).status is Status.on_plan


def test_two_entries_are_for_a_custodian_and_two_authorities_name_neither() -> None:
    same = decide(BY_NAMES, [entry(), entry()])
    assert same.status is Status.refer_to_custodian
    assert same.authority is not None
    split = decide(BY_NAMES, [entry(), entry(authority_id=uuid.uuid4())])
    assert split.status is Status.refer_to_custodian
    assert split.authority is None  # naming either would disclose where the child is


@given(st.lists(st.booleans(), min_size=2, max_size=6))
def test_more_than_one_candidate_is_never_on_plan(same_authority: list[bool]) -> None:
    candidates = [
        entry(authority_id=AUTHORITY if same else uuid.uuid4()) for same in same_authority
    ]
    assert decide(BY_NHS, candidates).status is Status.refer_to_custodian


def test_the_unborn_flag_and_categories_travel_with_the_decision() -> None:
    found = entry(unborn=True, categories=(Category.physical_abuse, Category.neglect))
    decision = decide(BY_NHS, [found])
    assert decision.candidates == (found,)
