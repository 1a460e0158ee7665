"""Every input that can overflow or fail to parse answers 422 naming the field, never
500 (issue 13): the 500s an attacker's schemathesis run found, each through real HTTP.

The 422 is the service's problem document; ``errors`` names the field by ``loc``
(the API) or by row and column (the CSV import), and never repeats the value sent.
"""

import base64
import json
from datetime import date, timedelta
from typing import Any

import httpx
import pytest

from app.cursors import encode_cursor
from app.errors import PROBLEM_MEDIA_TYPE
from tests.conftest import World
from tests.test_register import ENTRIES, child_body, create, created, unborn_body, with_version
from tests.test_register_bulk import csv_file, row, unborn_row, upload

TODAY = date.today()
ALL_NINES = "9999-12-31"
YEAR_ONE = "0001-01-01"
# Digits that str.isdigit() accepts and int() reads, but that are no NHS number's.
ARABIC_INDIC = str.maketrans("0123456789", "".join(chr(0x0660 + d) for d in range(10)))
FULLWIDTH = str.maketrans("0123456789", "".join(chr(0xFF10 + d) for d in range(10)))
NHS_NUMBER = "9434765919"


def locs(response: httpx.Response) -> list[list[str]]:
    """The fields a 422 problem names; fails unless the answer is one. A body's field is
    named from the body down (the schema's errors say "body" first, the rules' do not)."""
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith(PROBLEM_MEDIA_TYPE)
    named = [error["loc"] for error in response.json()["errors"]]
    return [loc[1:] if loc[:1] == ["body"] else loc for loc in named]


def columns(response: httpx.Response) -> set[str]:
    assert response.status_code == 422, response.text
    return {problem["column"] for problem in response.json()["errors"]}


def raw_cursor(parts: Any) -> str:
    """A cursor this service could decode but never issued."""
    encoded = base64.urlsafe_b64encode(json.dumps(parts).encode()).decode()
    return encoded.rstrip("=")


# --- register create ------------------------------------------------------------------


DATE_FIELDS = [
    ("plan_start",),
    ("next_review",),
    ("last_review",),
    ("child", "date_of_birth"),
    ("expected_delivery_date",),
    ("mother", "date_of_birth"),
]


def entry_with(field: tuple[str, ...], value: Any) -> dict[str, Any]:
    """A new entry (a born child's, or an unborn child's for its fields) with ``field`` set."""
    body = unborn_body() if field[0] in ("mother", "expected_delivery_date") else child_body()
    target = body
    for part in field[:-1]:
        target = target[part]
    target[field[-1]] = value
    return body


@pytest.mark.parametrize("value", [YEAR_ONE, "1899-12-31", ALL_NINES])
@pytest.mark.parametrize("field", DATE_FIELDS, ids="_".join)
async def test_an_implausible_date_in_a_new_entry_is_refused_naming_it(
    client: httpx.AsyncClient, world: World, field: tuple[str, ...], value: str
) -> None:
    response = await create(client, world, entry_with(field, value))

    assert locs(response) == [list(field)]
    assert value not in response.text


async def test_a_mother_born_in_year_one_is_refused(
    client: httpx.AsyncClient, world: World
) -> None:
    body = unborn_body(mother={**unborn_body()["mother"], "date_of_birth": YEAR_ONE})

    assert locs(await create(client, world, body)) == [["mother", "date_of_birth"]]


@pytest.mark.parametrize(
    "value", [0, "0", "2020-01-01T00:00:00", "20200101", "2020-01-01".translate(ARABIC_INDIC)]
)
async def test_a_date_that_is_not_yyyy_mm_dd_is_refused(
    client: httpx.AsyncClient, world: World, value: Any
) -> None:
    assert locs(await create(client, world, child_body(plan_start=value))) == [["plan_start"]]


@pytest.mark.parametrize("value", [YEAR_ONE, ALL_NINES])
@pytest.mark.parametrize(
    ("method", "suffix", "body", "field"),
    [
        ("PATCH", "", {"reason": "correction", "plan_start": "V"}, ["plan_start"]),
        ("PATCH", "", {"reason": "correction", "next_review": "V"}, ["next_review"]),
        ("POST", "/reviews", {"held_on": "V"}, ["held_on"]),
        ("POST", "/reviews", {"held_on": TODAY.isoformat(), "next_review": "V"}, ["next_review"]),
        ("POST", "/end", {"reason": "died", "ended_on": "V"}, ["ended_on"]),
    ],
    ids=["change_plan_start", "change_next_review", "review_held_on", "review_next", "end"],
)
async def test_an_implausible_date_in_a_change_is_refused_naming_it(
    client: httpx.AsyncClient,
    world: World,
    method: str,
    suffix: str,
    body: dict[str, str],
    field: list[str],
    value: str,
) -> None:
    entry = await created(client, world, child_body())
    sent = {key: value if text == "V" else text for key, text in body.items()}

    response = await client.request(
        method,
        f"{ENTRIES}/{entry['id']}{suffix}",
        json=sent,
        headers=with_version(world, entry["version"]),
    )

    assert locs(response) == [field]


@pytest.mark.parametrize("value", [YEAR_ONE, ALL_NINES])
async def test_an_implausible_date_of_birth_at_birth_is_refused_naming_it(
    client: httpx.AsyncClient, world: World, value: str
) -> None:
    entry = await created(client, world, unborn_body())
    baby = {**child_body()["child"], "date_of_birth": value}

    response = await client.post(
        f"{ENTRIES}/{entry['id']}/birth",
        json={"child": baby},
        headers=with_version(world, entry["version"]),
    )

    assert locs(response) == [["child", "date_of_birth"]]


async def test_a_search_by_an_implausible_date_of_birth_is_refused_naming_it(
    client: httpx.AsyncClient, world: World
) -> None:
    search = {"given_name": "Amara", "family_name": "Quinn-Lowe", "date_of_birth": YEAR_ONE}

    response = await client.post(
        f"{ENTRIES}/search", json=search, headers=world["custodian_a"].headers
    )

    assert locs(response) == [["date_of_birth"]]


# --- identifiers ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "nhs",
    [
        NHS_NUMBER.translate(ARABIC_INDIC),
        NHS_NUMBER.translate(FULLWIDTH),
        NHS_NUMBER[:9] + NHS_NUMBER[9:].translate(ARABIC_INDIC),
        NHS_NUMBER + "\x00",
    ],
    ids=["arabic_indic", "fullwidth", "one_arabic_indic", "nul"],
)
async def test_an_nhs_number_of_non_ascii_digits_is_refused(
    client: httpx.AsyncClient, world: World, nhs: str
) -> None:
    body = child_body(child={**child_body()["child"], "nhs_number": nhs})

    assert locs(await create(client, world, body)) == [["child", "nhs_number"]]


@pytest.mark.parametrize(
    "given",
    ["Ann\x00Marie", "Ann\tMarie", "Ann\nMarie", "Ann\x1cMarie", "Ann\u200bMarie", "A" * 10_000],
    ids=["nul", "tab", "newline", "file_separator", "zero_width_space", "enormous"],
)
async def test_a_name_with_control_characters_or_enormous_is_refused(
    client: httpx.AsyncClient, world: World, given: str
) -> None:
    body = child_body(child={**child_body()["child"], "given_name": given})

    assert locs(await create(client, world, body)) == [["child", "given_name"]]


async def test_a_name_that_normalises_too_long_to_store_is_refused(
    client: httpx.AsyncClient, world: World
) -> None:
    # U+FDFA is one letter that NFKD makes eighteen: the match key would not fit.
    body = child_body(child={**child_body()["child"], "family_name": "\ufdfa" * 100})

    assert locs(await create(client, world, body)) == [["child", "family_name"]]


# --- lookups ----------------------------------------------------------------------------


@pytest.mark.parametrize("born", [YEAR_ONE, "1899-12-31", ALL_NINES])
async def test_a_lookup_by_an_implausible_date_of_birth_is_refused(
    client: httpx.AsyncClient, world: World, born: str
) -> None:
    body = {
        "subject": {"given_name": "Hana", "family_name": "Petrova", "date_of_birth": born},
        "purpose": "out_of_hours_referral",
        "reason": "presented at the out-of-hours desk",
    }
    response = await client.post("/v1/lookups", json=body, headers=world["duty_officer"].headers)

    assert locs(response) == [["subject", "date_of_birth"]]


# --- the CSV import ---------------------------------------------------------------------


@pytest.mark.parametrize("value", [YEAR_ONE, ALL_NINES])
@pytest.mark.parametrize(
    ("column", "make"),
    [
        ("plan_start", row),
        ("next_review", row),
        ("last_review", row),
        ("child_date_of_birth", row),
        ("expected_delivery_date", unborn_row),
        ("mother_date_of_birth", unborn_row),
    ],
    ids=lambda x: x if isinstance(x, str) else None,
)
async def test_an_implausible_date_in_an_import_is_a_row_problem(
    client: httpx.AsyncClient, world: World, column: str, make: Any, value: str
) -> None:
    response = await upload(client, world, csv_file([make(), {**make(), column: value}]))

    assert columns(response) == {column}
    assert {problem["row"] for problem in response.json()["errors"]} == {3}


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("child_nhs_number", NHS_NUMBER.translate(ARABIC_INDIC)),
        ("child_given_name", "Ann\x00Marie"),
        ("child_family_name", "B" * 5_000),
        ("plan_start", "not a date"),
        ("categories", "neglect;\x00"),
    ],
)
async def test_an_unparseable_cell_in_an_import_is_a_row_problem(
    client: httpx.AsyncClient, world: World, column: str, value: str
) -> None:
    response = await upload(client, world, csv_file([{**row(), column: value}]))

    assert columns(response) == {column}


# --- cursors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cursor",
    [
        encode_cursor("not-a-date", "7b0c4f4e-6d1e-4b7a-9a53-0a8f3c2e5d11"),
        encode_cursor("2026-01-01", "not-a-uuid"),
        encode_cursor("9999-99-99", "7b0c4f4e-6d1e-4b7a-9a53-0a8f3c2e5d11"),
        raw_cursor([1, 2]),
        raw_cursor({"next_review": "2026-01-01"}),
        raw_cursor(["2026-01-01"]),
        "bm90LWEtY3Vyc29y",
        "%%%",
        "٣",
    ],
    ids=[
        "no_date",
        "no_id",
        "impossible_date",
        "numbers",
        "object",
        "too_short",
        "not_json",
        "not_base64",
        "non_ascii",
    ],
)
async def test_a_register_cursor_of_the_wrong_shape_is_refused_naming_it(
    client: httpx.AsyncClient, world: World, cursor: str
) -> None:
    response = await client.get(
        ENTRIES, params={"cursor": cursor}, headers=world["custodian_a"].headers
    )

    assert locs(response) == [["query", "cursor"]]


async def test_an_audit_cursor_of_the_wrong_shape_is_refused_naming_it(
    client: httpx.AsyncClient, world: World
) -> None:
    response = await client.get(
        "/v1/audit/events",
        params={"cursor": encode_cursor("0001-01-01T00:00:00+05:00", "x")},
        headers=world["custodian_a"].headers,
    )

    assert locs(response) == [["query", "cursor"]]


# --- admin pagination -------------------------------------------------------------------


@pytest.mark.parametrize("resource", ["organisations", "clients", "users"])
@pytest.mark.parametrize(
    "offset", ["-1", "1000001", str(2**63), str(2**64), "1e3", "0.5", "1".translate(ARABIC_INDIC)]
)
async def test_an_admin_offset_out_of_range_is_refused_naming_it(
    client: httpx.AsyncClient, world: World, resource: str, offset: str
) -> None:
    response = await client.get(
        f"/v1/admin/{resource}", params={"offset": offset}, headers=world["operator"].headers
    )

    assert locs(response) == [["query", "offset"]]


@pytest.mark.parametrize("resource", ["organisations", "clients", "users"])
async def test_an_admin_offset_at_its_bound_answers_an_empty_page(
    client: httpx.AsyncClient, world: World, resource: str
) -> None:
    response = await client.get(
        f"/v1/admin/{resource}",
        params={"offset": "1000000"},
        headers=world["operator"].headers,
    )

    assert response.status_code == 200, response.text
    assert response.json() == []


@pytest.mark.parametrize("limit", ["0", "-1", "201", str(2**64), "1.5"])
async def test_a_register_limit_out_of_range_is_refused_naming_it(
    client: httpx.AsyncClient, world: World, limit: str
) -> None:
    response = await client.get(
        ENTRIES, params={"limit": limit}, headers=world["custodian_a"].headers
    )

    assert locs(response) == [["query", "limit"]]


# --- alerts -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("to", "0.5"),
        ("to", "0"),
        ("to", "1700000000"),
        ("from", "1e3"),
        ("to", "2026-01-01"),
        ("to", "2026-01-01T00:00:00"),
        ("to", "0001-01-01T00:00:00+05:00"),
        ("to", "9999-12-31T23:59:59-05:00"),
        ("from", "0001-01-01T00:00:00Z"),
        ("from", "9999-12-31T23:59:59Z"),
    ],
)
async def test_an_alert_period_that_is_not_a_plausible_time_is_refused_naming_it(
    client: httpx.AsyncClient, world: World, name: str, value: str
) -> None:
    response = await client.get(
        "/v1/audit/alerts", params={name: value}, headers=world["custodian_a"].headers
    )

    assert locs(response) == [["query", name]]


async def test_an_alert_period_in_rfc_3339_is_answered(
    client: httpx.AsyncClient, world: World
) -> None:
    now = date.today()
    params = {
        "from": f"{(now - timedelta(days=2)).isoformat()}T00:00:00Z",
        "to": f"{now.isoformat()}T00:00:00+01:00",
    }
    response = await client.get(
        "/v1/audit/alerts", params=params, headers=world["custodian_a"].headers
    )

    assert response.status_code == 200, response.text


# --- free text --------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["notes", "lead_professional", "team_contact"])
@pytest.mark.parametrize(
    "text", ["a\\u0000b", "a\\ud800b", "a\\u001bb"], ids=["nul", "surrogate", "escape"]
)
async def test_free_text_that_cannot_be_stored_is_refused_naming_it(
    client: httpx.AsyncClient, world: World, field: str, text: str
) -> None:
    # Sent as raw JSON: a lone surrogate cannot be encoded by the client's own encoder.
    body = json.dumps(child_body(**{field: "PLACEHOLDER"})).replace("PLACEHOLDER", text)
    response = await client.post(
        ENTRIES,
        content=body,
        headers={**world["custodian_a"].headers, "Content-Type": "application/json"},
    )

    assert locs(response) == [[field]]


@pytest.mark.parametrize("text", ["a\\u0000b", "a\\u001bb"], ids=["nul", "escape"])
async def test_a_lookup_reason_that_cannot_be_stored_is_refused_naming_it(
    client: httpx.AsyncClient, world: World, text: str
) -> None:
    body = {
        "subject": {"nhs_number": NHS_NUMBER},
        "purpose": "out_of_hours_referral",
        "reason": "PLACEHOLDER",
    }
    response = await client.post(
        "/v1/lookups",
        content=json.dumps(body).replace("PLACEHOLDER", text),
        headers={**world["duty_officer"].headers, "Content-Type": "application/json"},
    )

    assert locs(response) == [["reason"]]
