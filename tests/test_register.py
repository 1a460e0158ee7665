"""Custodians keep their authority's part of the register (issue 5): create, read, list,
change with If-Match, reviews, end, birth, history; every rule refused with a clear
problem; and a lookup after each kind of change answers from the version it names."""

import asyncio
import secrets
import uuid
from datetime import date, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.audit.models import AuditEvent
from app.config import Settings
from app.register.models import RegisterEntry, RegisterEntryVersion
from app.register.rules import add_months
from tests.conftest import BORN, NHS, World
from tests.enquiries import ask, fresh_nhs
from tests.faults import audit_log_unwritable

TODAY = date.today()
ENTRIES = "/v1/register/entries"


def name() -> str:
    return "".join(secrets.choice("abcdefghijklmnop") for _ in range(9)).title()


def child_body(nhs: str | None = "fresh", **overrides: Any) -> dict[str, Any]:
    """A new child's entry that no other test uses."""
    body: dict[str, Any] = {
        "child": {
            "nhs_number": fresh_nhs() if nhs == "fresh" else nhs,
            "given_name": name(),
            "family_name": "Registertest",
            "date_of_birth": (TODAY - timedelta(days=2500)).isoformat(),
        },
        "categories": ["neglect"],
        "plan_start": (TODAY - timedelta(days=10)).isoformat(),
        "lead_professional": "Sam Worker, social worker",
        "team_contact": "Children's Services, 020 7946 0150",
        "notes": "custodian-only note",
    }
    body.update(overrides)
    return body


def unborn_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "mother": {
            "nhs_number": fresh_nhs(),
            "given_name": name(),
            "family_name": "Mothertest",
            "date_of_birth": "1996-04-02",
        },
        "expected_delivery_date": (TODAY + timedelta(days=60)).isoformat(),
        "categories": ["physical_abuse"],
        "plan_start": (TODAY - timedelta(days=5)).isoformat(),
    }
    body.update(overrides)
    return body


async def create(
    client: httpx.AsyncClient, world: World, body: dict[str, Any], who: str = "custodian_a"
) -> httpx.Response:
    return await client.post(ENTRIES, json=body, headers=world[who].headers)


async def created(
    client: httpx.AsyncClient, world: World, body: dict[str, Any], who: str = "custodian_a"
) -> dict[str, Any]:
    response = await create(client, world, body, who)
    assert response.status_code == 201, response.text
    return response.json()


def with_version(world: World, version: int | str, who: str = "custodian_a") -> dict[str, str]:
    return {**world[who].headers, "If-Match": f'"{version}"'}


async def event_of(
    sessionmaker: async_sessionmaker[AsyncSession], response: httpx.Response
) -> AuditEvent:
    async with sessionmaker() as session:
        events = (
            await session.scalars(
                select(AuditEvent).where(AuditEvent.request_id == response.headers["x-request-id"])
            )
        ).all()
    assert len(events) == 1, events
    return events[0]


# --- create and read -------------------------------------------------------------------


async def test_create_returns_the_entry_its_location_and_etag_and_records_version_1(
    client: httpx.AsyncClient, world: World, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    body = child_body()
    response = await create(client, world, body)
    assert response.status_code == 201, response.text
    entry = response.json()
    assert response.headers["location"] == f"{ENTRIES}/{entry['id']}"
    assert response.headers["etag"] == '"1"'
    assert entry["version"] == 1
    assert entry["status"] == "active"
    assert entry["authority_id"] == str(world.orgs["authority_a"].id)
    assert entry["child"]["nhs_number"] == body["child"]["nhs_number"]
    assert entry["unborn"] is False
    assert entry["notes"] == "custodian-only note"
    # The first review is due within 3 months of the plan start.
    assert entry["next_review"] == add_months(TODAY - timedelta(days=10), 3).isoformat()
    assert entry["review_overdue"] is False

    event = await event_of(sessionmaker, response)
    assert event.event_type == "register.entry_created"
    assert str(event.entry_id) == entry["id"]
    assert event.entry_version == 1
    assert event.principal == world["custodian_a"].subject
    async with sessionmaker() as session:
        versions = await session.scalar(
            select(func.count()).where(RegisterEntryVersion.entry_id == uuid.UUID(entry["id"]))
        )
    assert versions == 1

    read = await client.get(response.headers["location"], headers=world["custodian_a"].headers)
    assert read.status_code == 200
    assert read.headers["etag"] == '"1"'
    assert read.json() == entry
    assert (await event_of(sessionmaker, read)).event_type == "register.read"


async def test_an_unborn_childs_entry_is_held_against_the_mother(
    client: httpx.AsyncClient, world: World
) -> None:
    body = unborn_body()
    entry = await created(client, world, body)
    assert entry["unborn"] is True
    assert entry["child"] is None
    assert entry["mother"]["nhs_number"] == body["mother"]["nhs_number"]
    answer = (await ask(client, world, "hospital_client", body["mother"]["nhs_number"])).json()
    assert answer["status"] == "on_plan"
    assert answer["unborn"] is True


async def test_several_categories_are_kept_in_one_order(
    client: httpx.AsyncClient, world: World
) -> None:
    entry = await created(
        client, world, child_body(categories=["sexual_abuse", "neglect", "emotional_abuse"])
    )
    assert entry["categories"] == ["neglect", "sexual_abuse", "emotional_abuse"]


def _iso(days: int) -> str:
    return (TODAY + timedelta(days=days)).isoformat()


def _child(**changes: Any) -> dict[str, Any]:
    person = child_body()["child"]
    person.update(changes)
    return person


INVALID = {
    "date of birth in the future": (
        {"child": _child(date_of_birth=_iso(3))},
        ["child", "date_of_birth"],
    ),
    "18 at plan start": (
        {"child": _child(date_of_birth="2000-01-01"), "plan_start": "2018-06-01"},
        ["child", "date_of_birth"],
    ),
    "18 or over now": (
        {"child": _child(date_of_birth=(TODAY - timedelta(days=18 * 366)).isoformat())},
        ["child", "date_of_birth"],
    ),
    "plan start in the future": ({"plan_start": _iso(2)}, ["plan_start"]),
    "plan start long before birth": (
        {"child": _child(date_of_birth=_iso(-30)), "plan_start": _iso(-400)},
        ["plan_start"],
    ),
    "first review later than 3 months": ({"next_review": _iso(120)}, ["next_review"]),
    "next review before plan start": ({"next_review": _iso(-20)}, ["next_review"]),
    "last review in the future": ({"last_review": _iso(1)}, ["last_review"]),
    "no categories": ({"categories": []}, ["body", "categories"]),
    "unknown category": ({"categories": ["neglect", "bullying"]}, ["body", "categories", "1"]),
    "bad NHS check digit": (
        {"child": _child(nhs_number="9991000012")},
        ["body", "child", "nhs_number"],
    ),
    "name with digits": ({"child": _child(given_name="Amy2")}, ["body", "child", "given_name"]),
    "unknown field": ({"address": "1 High Street"}, ["body", "address"]),
    "neither child nor unborn": ({"child": None}, ["body"]),
    "born child with a delivery date": ({"expected_delivery_date": _iso(30)}, ["body"]),
}


@pytest.mark.parametrize("case", list(INVALID))
async def test_invalid_entries_are_refused_with_the_field_named_and_nothing_stored(
    client: httpx.AsyncClient,
    world: World,
    sessionmaker: async_sessionmaker[AsyncSession],
    case: str,
) -> None:
    changes, loc = INVALID[case]
    body = child_body(**changes)
    response = await create(client, world, body)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert loc in [error["loc"] for error in problem["errors"]], problem
    # The refusal never repeats what was sent (it may be a child's identifier).
    child = body.get("child") or {}
    for value in (child.get("nhs_number"), child.get("given_name")):
        if value:
            assert value not in response.text
    if child:
        async with sessionmaker() as session:
            stored = await session.scalar(
                select(func.count()).where(RegisterEntry.child_given_name == child["given_name"])
            )
        assert stored == 0


UNBORN_INVALID = {
    "delivery more than 42 weeks away": ({"expected_delivery_date": _iso(300)}),
    "delivery before plan start": ({"expected_delivery_date": _iso(-30)}),
    "mother born in the future": (
        {"mother": {**unborn_body()["mother"], "date_of_birth": _iso(5)}}
    ),
    "mother under 10": ({"mother": {**unborn_body()["mother"], "date_of_birth": _iso(-365 * 5)}}),
    "mother without a delivery date": ({"expected_delivery_date": None}),
}


@pytest.mark.parametrize("case", list(UNBORN_INVALID))
async def test_implausible_unborn_entries_are_refused(
    client: httpx.AsyncClient, world: World, case: str
) -> None:
    response = await create(client, world, unborn_body(**UNBORN_INVALID[case]))
    assert response.status_code == 422, response.text


async def test_a_second_live_entry_for_the_same_child_is_refused_naming_the_first(
    client: httpx.AsyncClient, world: World
) -> None:
    body = child_body()
    first = await created(client, world, body)

    again = await create(client, world, child_body(child=body["child"]))
    assert again.status_code == 409
    assert first["id"] in again.json()["detail"]
    assert again.json()["errors"][0]["entry_id"] == first["id"]

    # The same names and date of birth without the NHS number: the same child.
    no_nhs = await create(client, world, child_body(child={**body["child"], "nhs_number": None}))
    assert no_nhs.status_code == 409
    assert first["id"] in no_nhs.json()["detail"]

    # Another authority may hold a plan for the same child (lookups then refer).
    assert (
        await create(client, world, child_body(child=body["child"]), "custodian_b")
    ).status_code == 201


async def test_two_children_with_the_same_name_and_birthday_but_different_nhs_numbers(
    client: httpx.AsyncClient, world: World
) -> None:
    body = child_body()
    await created(client, world, body)
    twin = {**body["child"], "nhs_number": fresh_nhs()}
    assert (await create(client, world, child_body(child=twin))).status_code == 201


async def test_a_child_can_be_registered_again_after_the_plan_ended(
    client: httpx.AsyncClient, world: World
) -> None:
    body = child_body()
    first = await created(client, world, body)
    ended = await client.post(
        f"{ENTRIES}/{first['id']}/end",
        json={"reason": "no_longer_at_risk", "ended_on": TODAY.isoformat()},
        headers=with_version(world, 1),
    )
    assert ended.status_code == 200, ended.text
    assert (await create(client, world, child_body(child=body["child"]))).status_code == 201


async def test_concurrent_creates_of_one_child_make_one_entry(
    client: httpx.AsyncClient, world: World, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    body = child_body()
    responses = await asyncio.gather(*(create(client, world, body) for _ in range(4)))
    assert sorted(r.status_code for r in responses) == [201, 409, 409, 409]
    async with sessionmaker() as session:
        count = await session.scalar(
            select(func.count()).where(
                RegisterEntry.subject_nhs_number == body["child"]["nhs_number"]
            )
        )
    assert count == 1


# --- change with If-Match ----------------------------------------------------------------


async def test_a_change_needs_the_version_it_was_made_against(
    client: httpx.AsyncClient, world: World
) -> None:
    entry = await created(client, world, child_body())
    url = f"{ENTRIES}/{entry['id']}"
    change = {"categories": ["neglect", "physical_abuse"], "reason": "review conference"}

    missing = await client.patch(url, json=change, headers=world["custodian_a"].headers)
    assert missing.status_code == 428
    star = await client.patch(
        url, json=change, headers={**world["custodian_a"].headers, "If-Match": "*"}
    )
    assert star.status_code == 428
    stale = await client.patch(url, json=change, headers=with_version(world, 7))
    assert stale.status_code == 412
    assert "version 1" in stale.json()["detail"]

    changed = await client.patch(url, json=change, headers=with_version(world, 1))
    assert changed.status_code == 200, changed.text
    assert changed.headers["etag"] == '"2"'
    assert changed.json()["version"] == 2
    assert changed.json()["categories"] == ["neglect", "physical_abuse"]
    # The same If-Match again is now stale: the first change is not overwritten.
    again = await client.patch(
        url, json={"notes": "x", "reason": "late edit"}, headers=with_version(world, 1)
    )
    assert again.status_code == 412


async def test_concurrent_changes_from_one_version_let_exactly_one_through(
    client: httpx.AsyncClient, world: World
) -> None:
    entry = await created(client, world, child_body())
    url = f"{ENTRIES}/{entry['id']}"
    results = await asyncio.gather(
        *(
            client.patch(
                url,
                json={"notes": f"edit {n}", "reason": "parallel edit"},
                headers=with_version(world, 1),
            )
            for n in range(4)
        )
    )
    assert sorted(r.status_code for r in results) == [200, 412, 412, 412]


async def test_a_change_needs_a_reason_and_something_to_change(
    client: httpx.AsyncClient, world: World
) -> None:
    entry = await created(client, world, child_body())
    url = f"{ENTRIES}/{entry['id']}"
    no_reason = await client.patch(url, json={"notes": "x"}, headers=with_version(world, 1))
    assert no_reason.status_code == 422
    nothing = await client.patch(url, json={"reason": "no change"}, headers=with_version(world, 1))
    assert nothing.status_code == 422
    removal = await client.patch(
        url, json={"categories": None, "reason": "remove"}, headers=with_version(world, 1)
    )
    assert removal.status_code == 422
    rule = await client.patch(
        url, json={"plan_start": _iso(5), "reason": "typo"}, headers=with_version(world, 1)
    )
    assert rule.status_code == 422
    assert ["plan_start"] in [e["loc"] for e in rule.json()["errors"]]


async def test_history_keeps_every_version_with_who_when_and_why(
    client: httpx.AsyncClient, world: World
) -> None:
    entry = await created(client, world, child_body())
    url = f"{ENTRIES}/{entry['id']}"
    await client.patch(
        url,
        json={"notes": "second note", "reason": "phone call from school"},
        headers=with_version(world, 1),
    )
    await client.patch(
        url,
        json={"categories": ["emotional_abuse"], "reason": "review conference decision"},
        headers=with_version(world, 2),
    )
    history = await client.get(f"{url}/history", headers=world["custodian_a"].headers)
    assert history.status_code == 200
    versions = history.json()
    assert [v["version"] for v in versions] == [1, 2, 3]
    assert [v["reason"] for v in versions[1:]] == [
        "phone call from school",
        "review conference decision",
    ]
    assert {v["changed_by"] for v in versions} == {world["custodian_a"].subject}
    assert [v["entry"]["notes"] for v in versions] == [
        "custodian-only note",
        "second note",
        "second note",
    ]
    assert [v["entry"]["categories"] for v in versions] == [
        ["neglect"],
        ["neglect"],
        ["emotional_abuse"],
    ]


async def test_correcting_the_childs_identifiers_moves_the_lookup_to_them(
    client: httpx.AsyncClient, world: World
) -> None:
    body = child_body()
    entry = await created(client, world, body)
    corrected = {**body["child"], "nhs_number": fresh_nhs()}
    response = await client.patch(
        f"{ENTRIES}/{entry['id']}",
        json={"child": corrected, "reason": "NHS number was mistyped"},
        headers=with_version(world, 1),
    )
    assert response.status_code == 200, response.text
    old = await ask(client, world, "hospital_client", body["child"]["nhs_number"])
    new = await ask(client, world, "hospital_client", corrected["nhs_number"])
    assert old.json()["status"] == "not_on_plan"
    assert new.json()["status"] == "on_plan"


# --- lookups after each kind of change name the version ------------------------------------


async def test_a_lookup_after_a_category_is_added_answers_it_and_names_version_2(
    client: httpx.AsyncClient, world: World, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    body = child_body()
    nhs = body["child"]["nhs_number"]
    entry = await created(client, world, body)
    before = await ask(client, world, "hospital_client", nhs)
    assert before.json()["categories"] == ["neglect"]
    assert (await event_of(sessionmaker, before)).entry_version == 1

    await client.patch(
        f"{ENTRIES}/{entry['id']}",
        json={"categories": ["neglect", "sexual_abuse"], "reason": "strategy meeting"},
        headers=with_version(world, 1),
    )
    after = await ask(client, world, "hospital_client", nhs)
    assert after.json()["categories"] == ["neglect", "sexual_abuse"]
    event = await event_of(sessionmaker, after)
    assert (str(event.entry_id), event.entry_version) == (entry["id"], 2)


async def test_an_ended_plan_is_never_disclosed(
    client: httpx.AsyncClient, world: World, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    body = child_body()
    nhs = body["child"]["nhs_number"]
    entry = await created(client, world, body)
    url = f"{ENTRIES}/{entry['id']}"
    ended = await client.post(
        f"{url}/end",
        json={"reason": "no_longer_at_risk", "ended_on": TODAY.isoformat(), "note": "RCPC"},
        headers=with_version(world, 1),
    )
    assert ended.status_code == 200, ended.text
    assert ended.json()["status"] == "ended"
    assert ended.json()["end_reason"] == "no_longer_at_risk"
    assert ended.json()["version"] == 2

    answer = await ask(client, world, "hospital_client", nhs)
    never = await ask(client, world, "hospital_client", fresh_nhs())
    assert answer.json()["status"] == "not_on_plan"
    assert {k: v for k, v in answer.json().items() if k != "lookup_id"} == {
        k: v for k, v in never.json().items() if k != "lookup_id"
    }
    assert (await event_of(sessionmaker, answer)).entry_id is None

    # Ended entries are never reopened or changed.
    for path, payload in (
        ("", {"notes": "x", "reason": "late note"}),
        ("/end", {"reason": "died", "ended_on": TODAY.isoformat()}),
        ("/reviews", {"held_on": TODAY.isoformat()}),
    ):
        method = client.patch if path == "" else client.post
        refused = await method(url + path, json=payload, headers=with_version(world, 2))
        assert refused.status_code == 409, (path, refused.text)


async def test_ending_needs_a_listed_reason_and_a_date_that_has_come(
    client: httpx.AsyncClient, world: World
) -> None:
    entry = await created(client, world, child_body())
    url = f"{ENTRIES}/{entry['id']}/end"
    for payload in (
        {"reason": "closed", "ended_on": TODAY.isoformat()},
        {"reason": "died"},
        {"reason": "moved_out_of_area", "ended_on": _iso(3)},
        {"reason": "moved_out_of_area", "ended_on": _iso(-30)},  # before the plan start
    ):
        response = await client.post(url, json=payload, headers=with_version(world, 1))
        assert response.status_code == 422, (payload, response.text)
    listed = await client.post(
        url,
        json={"reason": "transferred", "ended_on": TODAY.isoformat()},
        headers=with_version(world, 1),
    )
    assert listed.status_code == 200


async def test_recording_the_birth_turns_the_entry_into_the_childs(
    client: httpx.AsyncClient, world: World, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    body = unborn_body(expected_delivery_date=_iso(10))
    mother_nhs = body["mother"]["nhs_number"]
    entry = await created(client, world, body)
    baby = {
        "nhs_number": fresh_nhs(),
        "given_name": name(),
        "family_name": "Mothertest",
        "date_of_birth": _iso(-1),
    }
    born = await client.post(
        f"{ENTRIES}/{entry['id']}/birth",
        json={"child": baby, "note": "born at St Elsewhere"},
        headers=with_version(world, 1),
    )
    assert born.status_code == 200, born.text
    read = born.json()
    assert (read["unborn"], read["version"], read["expected_delivery_date"]) == (False, 2, None)
    assert read["child"]["nhs_number"] == baby["nhs_number"]
    assert read["mother"]["nhs_number"] == mother_nhs

    child_answer = await ask(client, world, "hospital_client", baby["nhs_number"])
    assert child_answer.json()["status"] == "on_plan"
    assert child_answer.json()["unborn"] is False
    event = await event_of(sessionmaker, child_answer)
    assert (str(event.entry_id), event.entry_version) == (entry["id"], 2)
    mother_answer = await ask(client, world, "hospital_client", mother_nhs)
    assert mother_answer.json()["status"] == "not_on_plan"

    again = await client.post(
        f"{ENTRIES}/{entry['id']}/birth", json={"child": baby}, headers=with_version(world, 2)
    )
    assert again.status_code == 409


async def test_a_birth_far_from_the_expected_date_is_refused(
    client: httpx.AsyncClient, world: World
) -> None:
    entry = await created(client, world, unborn_body(expected_delivery_date=_iso(200)))
    baby = {"given_name": name(), "family_name": "Early", "date_of_birth": _iso(-1)}
    response = await client.post(
        f"{ENTRIES}/{entry['id']}/birth", json={"child": baby}, headers=with_version(world, 1)
    )
    assert response.status_code == 422
    assert ["child", "date_of_birth"] in [e["loc"] for e in response.json()["errors"]]


async def test_a_child_who_has_turned_18_is_shown_ended_and_never_disclosed(
    client: httpx.AsyncClient, world: World
) -> None:
    # The fixture's "adult" entry was made before the child's 18th birthday and never ended.
    url = f"{ENTRIES}/{world.entries['adult'].id}"
    read = await client.get(url, headers=world["custodian_a"].headers)
    assert read.status_code == 200
    entry = read.json()
    assert (entry["status"], entry["end_reason"]) == ("ended", "reached_18")
    assert entry["ended_on"] == BORN["adult"].replace(year=BORN["adult"].year + 18).isoformat()
    assert (await ask(client, world, "hospital_client", NHS["adult"])).json()["status"] == (
        "not_on_plan"
    )
    refused = await client.patch(
        url,
        json={"notes": "x", "reason": "late note"},
        headers=with_version(world, entry["version"]),
    )
    assert refused.status_code == 409
    listed = await client.get(ENTRIES, params={"limit": 200}, headers=world["custodian_a"].headers)
    assert str(world.entries["adult"].id) not in {e["id"] for e in listed.json()["items"]}


# --- reviews ---------------------------------------------------------------------------


async def test_a_review_moves_the_next_one_to_at_most_6_months_later(
    client: httpx.AsyncClient, world: World
) -> None:
    entry = await created(client, world, child_body(plan_start=_iso(-80)))
    url = f"{ENTRIES}/{entry['id']}/reviews"
    held = _iso(-2)
    for payload in (
        {"held_on": _iso(1)},  # in the future
        {"held_on": _iso(-100)},  # before the plan start
        {"held_on": held, "next_review": add_months(TODAY, 7).isoformat()},
        {"held_on": held, "next_review": _iso(-3)},
    ):
        refused = await client.post(url, json=payload, headers=with_version(world, 1))
        assert refused.status_code == 422, (payload, refused.text)
    reviewed = await client.post(url, json={"held_on": held}, headers=with_version(world, 1))
    assert reviewed.status_code == 200, reviewed.text
    assert reviewed.json()["last_review"] == held
    assert reviewed.json()["next_review"] == add_months(TODAY - timedelta(days=2), 6).isoformat()
    sooner = await client.post(
        url,
        json={"held_on": TODAY.isoformat(), "next_review": _iso(30)},
        headers=with_version(world, 2),
    )
    assert sooner.json()["next_review"] == _iso(30)


async def test_overdue_reviews_are_listed_and_counted(
    client: httpx.AsyncClient, world: World
) -> None:
    overdue = await created(client, world, child_body(plan_start=_iso(-120)))
    assert overdue["review_overdue"] is True
    on_time = await created(client, world, child_body())

    async def listed(**params: Any) -> dict[str, Any]:
        response = await client.get(
            ENTRIES, params={"limit": 200, **params}, headers=world["custodian_a"].headers
        )
        assert response.status_code == 200, response.text
        return response.json()

    page = await listed(review_overdue="true")
    ids = {e["id"] for e in page["items"]}
    assert overdue["id"] in ids
    assert on_time["id"] not in ids
    assert all(e["review_overdue"] for e in page["items"])
    assert page["count"] == len(page["items"])

    await client.post(
        f"{ENTRIES}/{overdue['id']}/reviews",
        json={"held_on": TODAY.isoformat()},
        headers=with_version(world, 1),
    )
    after = await listed(review_overdue="true")
    assert overdue["id"] not in {e["id"] for e in after["items"]}
    assert after["count"] == page["count"] - 1


async def test_the_list_pages_by_review_date_without_gaps_or_repeats(
    client: httpx.AsyncClient, world: World
) -> None:
    for _ in range(3):
        await created(client, world, child_body())
    everything = await client.get(
        ENTRIES, params={"limit": 200}, headers=world["custodian_a"].headers
    )
    expected = [e["id"] for e in everything.json()["items"]]
    assert everything.json()["count"] == len(expected)
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = (
            await client.get(ENTRIES, params=params, headers=world["custodian_a"].headers)
        ).json()
        seen += [e["id"] for e in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == expected
    reviews = [e["next_review"] for e in everything.json()["items"]]
    assert reviews == sorted(reviews)
    forged = await client.get(
        ENTRIES, params={"cursor": "bm90LWEtY3Vyc29y"}, headers=world["custodian_a"].headers
    )
    assert forged.status_code == 422


async def test_ended_entries_are_listed_apart(client: httpx.AsyncClient, world: World) -> None:
    response = await client.get(
        ENTRIES, params={"status": "ended", "limit": 200}, headers=world["custodian_a"].headers
    )
    ids = {e["id"] for e in response.json()["items"]}
    assert str(world.entries["ended_own"].id) in ids
    assert str(world.entries["adult"].id) in ids
    assert str(world.entries["neglect"].id) not in ids
    assert {e["status"] for e in response.json()["items"]} == {"ended"}


async def test_search_finds_a_child_by_nhs_number_or_names_in_the_body(
    client: httpx.AsyncClient, world: World, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    body = child_body()
    entry = await created(client, world, body)
    by_nhs = await client.post(
        f"{ENTRIES}/search",
        json={"nhs_number": body["child"]["nhs_number"]},
        headers=world["custodian_a"].headers,
    )
    assert [e["id"] for e in by_nhs.json()] == [entry["id"]]
    by_name = await client.post(
        f"{ENTRIES}/search",
        json={
            "given_name": body["child"]["given_name"].upper(),
            "family_name": "registertest",
            "date_of_birth": body["child"]["date_of_birth"],
        },
        headers=world["custodian_a"].headers,
    )
    assert [e["id"] for e in by_name.json()] == [entry["id"]]
    event = await event_of(sessionmaker, by_name)
    assert event.event_type == "register.read"
    partial = await client.post(
        f"{ENTRIES}/search",
        json={"family_name": "Registertest"},
        headers=world["custodian_a"].headers,
    )
    assert partial.status_code == 422


async def test_a_change_the_log_refuses_is_an_outage_not_a_duplicate_child(
    client: httpx.AsyncClient,
    world: World,
    settings: Settings,
    admin_sessionmaker: async_sessionmaker[AsyncSession],
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    """Only the one-live-plan index's refusal is "already on the register": the audit
    log refusing the change's event (on SQLite an integrity error too) is a 503, and
    nothing is written."""
    body = child_body()
    async with audit_log_unwritable(admin_sessionmaker, settings):
        refused = await create(client, world, body)
    assert refused.status_code == 503, refused.text
    assert refused.json()["code"] == "service_unavailable"
    async with sessionmaker() as session:
        stored = await session.scalar(
            select(func.count())
            .select_from(RegisterEntry)
            .where(RegisterEntry.subject_nhs_number == body["child"]["nhs_number"])
        )
    assert stored == 0
    # And once the log takes writes again, the same child goes on the register.
    assert (await create(client, world, body)).status_code == 201
