"""Property-based tests (hypothesis) of every parser of what a caller sends: dates,
cursors, NHS numbers, names and the CSV import (issue 13).

Most test the pure functions directly, over any input: each either gives a value
that keeps its promise or refuses with the error the service turns into a 422
naming the field, and nothing else ever escapes. A few go through HTTP, to show
the same holds end to end. Examples are bounded so the file runs in seconds.
"""

import base64
import csv
import io
import json
import unicodedata
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta, timezone
from functools import partial
from typing import Any, TypeVar

import httpx
import pytest
from fastapi import FastAPI
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from app.admin.routes import MAX_OFFSET
from app.audit.alerts import AlertQuery, Instant
from app.cursors import cursor_date, cursor_id, cursor_time, decode_cursor, encode_cursor
from app.errors import ProblemError
from app.lookup.schemas import Subject, born_on
from app.register.csvformat import IMPORT_COLUMNS, parse_csv
from app.register.identifiers import (
    MATCH_NAME_MAX,
    NAME_MAX,
    check_name,
    eighteenth_birthday,
    match_key,
    nhs_number_check_digit_ok,
    normalise_name,
    normalise_nhs_number,
)
from app.register.models import Category
from app.register.rules import add_months, default_next_review, entry_problems
from app.register.schemas import (
    EARLIEST_DATE,
    LATEST_AHEAD,
    EntryCreate,
    Person,
    plausible_date,
    storable_text,
)
from app.register.service import entry_values
from tests.conftest import World
from tests.enquiries import fresh_nhs

PURE = settings(max_examples=100, deadline=None)
# Through HTTP each example is a request (and for the register, a database write).
HTTP = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TODAY = date.today()
FIELDS_OF_A_DATE = (
    "plan_start",
    "next_review",
    "last_review",
    "expected_delivery_date",
    "child_date_of_birth",
    "mother_date_of_birth",
)

any_date = st.dates()  # 0001-01-01 to 9999-12-31
todays = st.dates(min_value=date(2000, 1, 1), max_value=date(2200, 12, 31))
# Offsets as RFC 3339 writes them: whole minutes, under a day either way.
offsets = st.integers(min_value=-1439, max_value=1439).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)
CONTROLS = {chr(c) for c in (*range(0x20), 0x7F)} - set("\t\n\r")
# Decimal digits of other scripts: str.isdigit() and int() take them all.
FOREIGN_ZEROS = (0x0660, 0x06F0, 0x0966, 0x09E6, 0xFF10, 0x1D7CE)
ARABIC_INDIC = str.maketrans("0123456789", "".join(chr(0x0660 + d) for d in range(10)))
FULLWIDTH = str.maketrans("0123456789", "".join(chr(0xFF10 + d) for d in range(10)))
T = TypeVar("T")


def attempt(call: Callable[[], T]) -> T | ValueError | ProblemError:
    """What ``call`` gives, or how it refuses (pydantic's ValidationError is a ValueError):
    anything else it raises fails the test."""
    try:
        return call()
    except (ValueError, ProblemError) as exc:
        return exc


def in_window(value: date | None, today: date) -> bool:
    return value is not None and EARLIEST_DATE <= value <= today + LATEST_AHEAD


def utc_date(moment: datetime) -> date | None:
    """The UTC date of an aware time; None when that is beyond the calendar."""
    offset = moment.utcoffset()
    assert offset is not None
    try:
        return (moment.replace(tzinfo=None) - offset).date()
    except OverflowError:
        return None


def forged_cursor(value: Any) -> str:
    """What a forger would send: any JSON, base64 encoded as the service's cursors are."""
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


def valid_nhs_numbers() -> st.SearchStrategy[str]:
    """Any valid NHS number (nine digits and their modulus 11 check digit)."""

    def with_check(nine: str) -> str | None:
        total = sum(int(d) * w for d, w in zip(nine, range(10, 1, -1), strict=True))
        check = (11 - total % 11) % 11
        return None if check == 10 else nine + str(check)

    return (
        st.text("0123456789", min_size=9, max_size=9)
        .map(with_check)
        .filter(lambda number: number is not None)
    )


def named(exc: ValidationError) -> list[tuple[int | str, ...]]:
    return [tuple(error["loc"]) for error in exc.errors()]


def cursor_refusal(exc: ProblemError) -> None:
    """The 422 every malformed cursor gets: it names the ``cursor`` query parameter."""
    assert exc.status == 422
    assert exc.errors is not None
    assert [error["loc"] for error in exc.errors] == [["query", "cursor"]]


# --- dates ------------------------------------------------------------------------------


@PURE
@given(value=any_date, today=todays)
def test_a_date_is_plausible_exactly_within_the_window(value: date, today: date) -> None:
    if in_window(value, today):
        assert plausible_date(value, today) == value
    else:
        with pytest.raises(ValueError, match="must be a date from"):
            plausible_date(value, today)


@PURE
@given(value=any_date, today=todays)
def test_a_date_of_birth_for_a_lookup_is_from_1900_to_today(value: date, today: date) -> None:
    if EARLIEST_DATE <= value <= today:
        assert born_on(value, today) == value
    else:
        with pytest.raises(ValueError, match="must be a date of birth"):
            born_on(value, today)


@PURE
@given(start=any_date, months=st.integers(min_value=-240_000, max_value=240_000))
def test_adding_months_never_runs_off_the_calendar(start: date, months: int) -> None:
    later = add_months(start, months)

    assert (later >= start) if months >= 0 else (later <= start)
    if date(2, 1, 1) <= later <= date(9998, 12, 1):
        assert (later.year - start.year) * 12 + later.month - start.month == months
        assert later.day <= start.day


@PURE
@given(born=any_date)
def test_an_eighteenth_birthday_is_always_a_date_after_the_birth(born: date) -> None:
    adult = eighteenth_birthday(born)

    assert adult > born
    assert adult == date.max or adult.year == born.year + 18


@PURE
@given(
    plan_start=any_date,
    next_review=st.none() | any_date,
    last_review=st.none() | any_date,
    child_born=st.none() | any_date,
    mother_born=any_date,
    delivery=any_date,
    today=todays,
)
def test_the_rules_hold_for_any_dates_without_raising(
    plan_start: date,
    next_review: date | None,
    last_review: date | None,
    child_born: date | None,
    mother_born: date,
    delivery: date,
    today: date,
) -> None:
    # Built without validation: the rules must not depend on the schema to stay total.
    def person(born: date) -> Person:
        return Person.model_construct(
            nhs_number=None, given_name="Ann", family_name="Lee", date_of_birth=born
        )

    unborn = child_born is None
    data = EntryCreate.model_construct(
        child=None if unborn else person(child_born),
        mother=person(mother_born) if unborn else None,
        expected_delivery_date=delivery if unborn else None,
        categories=[Category.neglect],
        plan_start=plan_start,
        next_review=next_review,
        last_review=last_review,
        lead_professional=None,
        team_contact=None,
        notes=None,
    )

    problems = entry_problems(data, today)
    default_next_review(plan_start, last_review)
    entry_values(data)

    if plan_start > today:
        assert ("plan_start",) in [problem.loc for problem in problems]


@PURE
@given(field=st.sampled_from(FIELDS_OF_A_DATE), value=any_date)
@example(field="mother_date_of_birth", value=date(1, 1, 1))
@example(field="plan_start", value=date(9999, 12, 31))
def test_the_schema_refuses_an_implausible_date_naming_only_its_field(
    field: str, value: date
) -> None:
    body: dict[str, Any] = {"categories": ["neglect"], "plan_start": "2024-01-10"}
    who = "mother" if field in ("mother_date_of_birth", "expected_delivery_date") else "child"
    body[who] = {"given_name": "Ann", "family_name": "Lee", "date_of_birth": "2020-02-03"}
    if who == "mother":
        body["expected_delivery_date"] = "2024-05-01"
    loc = tuple(field.split("_", 1)) if field.endswith("date_of_birth") else (field,)
    target = body[loc[0]] if len(loc) == 2 else body
    target[loc[-1]] = value.isoformat()

    result = attempt(lambda: EntryCreate.model_validate(body))

    if isinstance(result, ValidationError):
        assert named(result) == [loc]
        assert not in_window(value, date.today())
    else:
        assert isinstance(result, EntryCreate)
        assert in_window(value, date.today())


@PURE
@given(value=st.one_of(st.text(max_size=30), st.integers(), st.floats(), st.booleans()))
@example(value=0)
@example(value="0")
@example(value="2020-01-01T00:00:00")
@example(value="1999-01-01".translate(ARABIC_INDIC))
def test_a_date_is_only_ever_read_from_yyyy_mm_dd(value: Any) -> None:
    body = {
        "child": {"given_name": "Ann", "family_name": "Lee", "date_of_birth": "2020-02-03"},
        "categories": ["neglect"],
        "plan_start": value,
    }
    result = attempt(lambda: EntryCreate.model_validate(body))

    if isinstance(result, ValidationError):
        assert named(result) == [("plan_start",)]
    else:
        assert isinstance(result, EntryCreate)
        assert result.plan_start.isoformat() == value


@PURE
@given(moment=st.datetimes(timezones=offsets) | st.datetimes(), spelling=st.sampled_from("T "))
@example(moment=datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=5))), spelling="T")
@example(moment=datetime(9999, 12, 31, 23, 59, tzinfo=timezone(timedelta(hours=-5))), spelling="T")
def test_an_alert_period_is_an_aware_rfc_3339_time_in_the_window(
    moment: datetime, spelling: str
) -> None:
    accepted = moment.tzinfo is not None and in_window(utc_date(moment), date.today())

    result = attempt(lambda: AlertQuery.model_validate({"to": moment.isoformat(sep=spelling)}))

    if isinstance(result, ValidationError):
        assert named(result) == [("to",)]
        assert not accepted
    else:
        assert isinstance(result, AlertQuery)
        assert accepted
        assert result.period_to == moment
        assert result.period_to is not None
        assert result.period_to.tzinfo == UTC


@PURE
@given(text=st.text(max_size=40) | st.from_regex(r"-?[0-9]{1,12}(\.[0-9]{1,6})?", fullmatch=True))
@example(text="0.5")
@example(text="1700000000")
def test_an_alert_period_refuses_anything_but_a_time(text: str) -> None:
    result = attempt(lambda: TypeAdapter(Instant).validate_python(text))

    if not isinstance(result, ValidationError):
        assert isinstance(result, datetime)
        assert result.tzinfo == UTC
        assert text[:4].isascii()
        assert text[4] == "-"


# --- cursors ----------------------------------------------------------------------------


@PURE
@given(parts=st.lists(st.text(), min_size=1, max_size=4))
def test_a_cursor_decodes_to_the_parts_it_was_made_of(parts: list[str]) -> None:
    assert decode_cursor(encode_cursor(*parts), len(parts)) == parts


@PURE
@given(
    cursor=st.text(max_size=400)
    | st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=10),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
        max_leaves=6,
    ).map(forged_cursor),
    size=st.integers(min_value=1, max_value=3),
)
def test_any_text_as_a_cursor_decodes_or_is_refused_naming_it(cursor: str, size: int) -> None:
    result = attempt(lambda: decode_cursor(cursor, size))

    if isinstance(result, ProblemError):
        cursor_refusal(result)
    else:
        assert isinstance(result, list)
        assert len(result) == size
        assert all(isinstance(part, str) for part in result)


@PURE
@given(text=st.text(max_size=40))
@example(text="0001-01-01T00:00:00+05:00")
@example(text="9999-12-31T23:59:59-05:00")
def test_a_cursor_part_is_a_time_date_or_id_or_refused_naming_the_cursor(text: str) -> None:
    for decode in (cursor_time, cursor_date, cursor_id):
        result = attempt(partial(decode, text))

        if isinstance(result, ProblemError):
            cursor_refusal(result)
        else:
            assert isinstance(result, (datetime, date, uuid.UUID))
        if isinstance(result, datetime):
            assert result.tzinfo == UTC


@PURE
@given(moment=st.datetimes(timezones=offsets))
def test_a_cursor_time_is_the_same_instant_in_utc(moment: datetime) -> None:
    result = attempt(lambda: cursor_time(moment.isoformat()))

    if isinstance(result, ProblemError):
        cursor_refusal(result)
        assert utc_date(moment) is None  # only for an instant beyond the calendar in UTC
    else:
        assert result == moment


# --- NHS numbers ------------------------------------------------------------------------


@PURE
@given(raw=st.text(max_size=20))
@example(raw="9434765919".translate(ARABIC_INDIC))
@example(raw="9434765919".translate(FULLWIDTH))
def test_any_text_is_a_valid_nhs_number_or_refused(raw: str) -> None:
    result = attempt(lambda: normalise_nhs_number(raw))

    if not isinstance(result, ValueError):
        assert isinstance(result, str)
        assert len(result) == 10
        assert result.isascii()
        assert result.isdigit()
        assert nhs_number_check_digit_ok(result)


@PURE
@given(
    number=valid_nhs_numbers(),
    separators=st.lists(st.sampled_from(["", " ", "-"]), min_size=2, max_size=2),
)
def test_an_nhs_number_is_read_with_spaces_or_hyphens(number: str, separators: list[str]) -> None:
    spaced = number[:3] + separators[0] + number[3:6] + separators[1] + number[6:]

    assert normalise_nhs_number(f" {spaced} ") == number


@PURE
@given(
    number=valid_nhs_numbers(),
    position=st.integers(min_value=0, max_value=9),
    zero=st.sampled_from(FOREIGN_ZEROS),
)
def test_an_nhs_number_with_a_digit_of_another_script_is_refused(
    number: str, position: int, zero: int
) -> None:
    foreign = chr(zero + int(number[position]))
    assert foreign.isdigit()
    assert unicodedata.digit(foreign) == int(number[position])

    with pytest.raises(ValueError, match="not a valid NHS number"):
        normalise_nhs_number(number[:position] + foreign + number[position + 1 :])


@PURE
@given(number=valid_nhs_numbers(), position=st.integers(0, 9), digit=st.sampled_from("0123456789"))
def test_one_wrong_digit_in_an_nhs_number_is_always_caught(
    number: str, position: int, digit: str
) -> None:
    assume(number[position] != digit)

    assert not nhs_number_check_digit_ok(number[:position] + digit + number[position + 1 :])


# --- names ------------------------------------------------------------------------------


@PURE
@given(raw=st.text(max_size=500))
@example(raw="Ann\x1cMarie")
@example(raw="\ufdfa" * 100)
@example(raw="ß" * 100)
def test_any_text_is_a_storable_whole_name_or_refused(raw: str) -> None:
    name = attempt(lambda: check_name(raw))
    if isinstance(name, ValueError):
        return
    assert isinstance(name, str)
    assert len(name) <= NAME_MAX
    assert len(normalise_name(name)) <= MATCH_NAME_MAX
    assert not any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in name)
    assert check_name(name) == name
    assert len(match_key(name, name, date(2020, 1, 1))) <= 400  # the column's size


@PURE
@given(raw=st.text(max_size=300))
def test_a_person_with_any_given_name_is_valid_or_refused_naming_it(raw: str) -> None:
    person = {"given_name": raw, "family_name": "Lee", "date_of_birth": "2020-02-03"}

    result = attempt(lambda: Person.model_validate(person))

    if isinstance(result, ValidationError):
        assert named(result) == [("given_name",)]
    else:
        assert isinstance(result, Person)


@PURE
@given(raw=st.text(max_size=50))
def test_free_text_is_stored_only_when_both_databases_can_keep_it(raw: str) -> None:
    result = attempt(lambda: storable_text(raw))

    unstorable = any(c in CONTROLS or 0xD800 <= ord(c) <= 0xDFFF for c in raw)
    assert isinstance(result, ValueError) == unstorable
    if isinstance(result, str):
        result.encode("utf-8")


@PURE
@given(
    subject=st.fixed_dictionaries(
        {},
        optional={
            "nhs_number": st.text(max_size=16),
            "given_name": st.text(max_size=20),
            "family_name": st.text(max_size=20),
            "date_of_birth": st.text(max_size=12) | any_date.map(date.isoformat),
        },
    )
)
def test_a_lookup_subject_is_valid_or_refused_naming_its_fields(subject: dict[str, str]) -> None:
    result = attempt(lambda: Subject.model_validate_json(json.dumps(subject)))

    if isinstance(result, ValidationError):
        assert all(loc == () or loc[0] in subject for loc in named(result))
    else:
        assert isinstance(result, Subject)


# --- the CSV import -----------------------------------------------------------------------

ROW_COLUMNS = set(IMPORT_COLUMNS) | {"", "child", "mother"}


def csv_text(rows: list[dict[str, str]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, IMPORT_COLUMNS, lineterminator="\r\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def good_row() -> dict[str, str]:
    return {
        "child_nhs_number": "9434765919",
        "child_given_name": "Amelia",
        "child_family_name": "Importtest",
        "child_date_of_birth": (TODAY - timedelta(days=1500)).isoformat(),
        "categories": "neglect",
        "plan_start": (TODAY - timedelta(days=20)).isoformat(),
    }


def good_unborn_row() -> dict[str, str]:
    return {
        "mother_given_name": "Hana",
        "mother_family_name": "Importtest",
        "mother_date_of_birth": "1995-02-03",
        "expected_delivery_date": (TODAY + timedelta(days=90)).isoformat(),
        "categories": "physical_abuse",
        "plan_start": TODAY.isoformat(),
    }


@PURE
@given(text=st.text(max_size=300))
@example(text="categories,plan_start\nneglect,9999-12-31\n")
@example(text='categories,plan_start\n"neglect\n')
def test_any_text_as_a_csv_file_parses_or_is_reported_by_row_and_column(text: str) -> None:
    rows, problems = parse_csv(text, TODAY)

    assert rows or problems
    for problem in problems:
        assert problem.row >= 1
        assert problem.column in ROW_COLUMNS or problem.row == 1


@PURE
@given(column=st.sampled_from(IMPORT_COLUMNS), cell=st.text(max_size=120))
def test_any_cell_in_a_row_parses_or_is_reported_by_its_column(column: str, cell: str) -> None:
    row = good_unborn_row() if column.startswith("mother") else good_row()

    rows, problems = parse_csv(csv_text([{**row, column: cell}]), TODAY)

    if problems:
        assert not rows
        assert {problem.row for problem in problems} == {2}
        assert {problem.column for problem in problems} <= ROW_COLUMNS
    else:
        assert len(rows) == 1


@PURE
@given(column=st.sampled_from(FIELDS_OF_A_DATE), value=any_date)
@example(column="plan_start", value=date(9999, 12, 31))
@example(column="mother_date_of_birth", value=date(1, 1, 1))
def test_a_date_cell_outside_the_window_is_a_problem_of_its_column(
    column: str, value: date
) -> None:
    unborn = column in ("mother_date_of_birth", "expected_delivery_date")
    row = {**(good_unborn_row() if unborn else good_row()), column: value.isoformat()}

    rows, problems = parse_csv(csv_text([row]), TODAY)

    if not in_window(value, TODAY):
        assert [(problem.row, problem.column) for problem in problems] == [(2, column)]
        assert value.isoformat() not in problems[0].problem
    else:
        assert {problem.column for problem in problems} <= set(FIELDS_OF_A_DATE)
        assert bool(rows) != bool(problems)


# --- through HTTP -----------------------------------------------------------------------


def http_client(app: FastAPI) -> httpx.AsyncClient:
    # Made per example: hypothesis runs one test many times, a fixture would be shared.
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")


def fields_named(response: httpx.Response) -> list[list[str]]:
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    return [error["loc"] for error in response.json()["errors"]]


@HTTP
@given(plan_start=any_date)
@example(plan_start=date(9999, 12, 31))
@example(plan_start=date(1, 1, 1))
async def test_a_new_entry_with_any_plan_start_is_created_or_refused_naming_it(
    app: FastAPI, world: World, plan_start: date
) -> None:
    body = {
        "child": {
            "nhs_number": fresh_nhs(),
            "given_name": "Propertytest",
            "family_name": "Child",
            "date_of_birth": (TODAY - timedelta(days=2500)).isoformat(),
        },
        "categories": ["neglect"],
        "plan_start": plan_start.isoformat(),
    }
    async with http_client(app) as http:
        response = await http.post(
            "/v1/register/entries", json=body, headers=world["custodian_a"].headers
        )

    if response.status_code != 201:
        assert fields_named(response) in ([["body", "plan_start"]], [["plan_start"]])


@HTTP
@given(
    cursor=st.text(alphabet=st.characters(codec="ascii"), max_size=60)
    | st.lists(st.text(max_size=12), max_size=3).map(lambda parts: encode_cursor(*parts))
)
@example(cursor=encode_cursor("not-a-date", str(uuid.uuid4())))
async def test_any_register_cursor_pages_or_is_refused_naming_it(
    app: FastAPI, world: World, cursor: str
) -> None:
    async with http_client(app) as http:
        response = await http.get(
            "/v1/register/entries", params={"cursor": cursor}, headers=world["custodian_a"].headers
        )

    if response.status_code != 200:
        assert fields_named(response) == [["query", "cursor"]]


@HTTP
@given(offset=st.integers(min_value=-(2**70), max_value=2**70))
@example(offset=2**63)
@example(offset=-1)
async def test_any_admin_offset_pages_or_is_refused_naming_it(
    app: FastAPI, world: World, offset: int
) -> None:
    async with http_client(app) as http:
        response = await http.get(
            "/v1/admin/users", params={"offset": str(offset)}, headers=world["operator"].headers
        )

    if 0 <= offset <= MAX_OFFSET:
        assert response.status_code == 200, response.text
    else:
        assert fields_named(response) == [["query", "offset"]]


@HTTP
@given(column=st.sampled_from(FIELDS_OF_A_DATE), value=any_date)
@example(column="plan_start", value=date(9999, 12, 31))
async def test_an_import_with_any_date_is_imported_or_reported_by_column(
    app: FastAPI, world: World, column: str, value: date
) -> None:
    unborn = column in ("mother_date_of_birth", "expected_delivery_date")
    row = good_unborn_row() if unborn else good_row()
    row[f"{'mother' if unborn else 'child'}_nhs_number"] = fresh_nhs()
    row[column] = value.isoformat()
    async with http_client(app) as http:
        response = await http.post(
            "/v1/register/imports",
            content=csv_text([row]).encode(),
            headers={**world["custodian_a"].headers, "Content-Type": "text/csv"},
        )

    if response.status_code != 201:
        assert response.status_code == 422, response.text
        reported = {problem["column"] for problem in response.json()["errors"]}
        if not in_window(value, TODAY):
            assert reported == {column}
        else:
            assert reported <= set(FIELDS_OF_A_DATE)
