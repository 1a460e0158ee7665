"""DESIGN.md's "Need to know" and matching rules, as a reference point sees them."""

import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.audit.models import AuditEvent
from tests.conftest import BORN, NHS, World

ENQUIRER = {"id": "C123456", "name": "Dr A Jones", "role": "ED registrar"}
ON_PLAN_KEYS = {"lookup_id", "status", "categories", "unborn", "contact"}
OTHER_KEYS = {"lookup_id", "status", "contact"}
DUTY = {"name": "Test duty desk", "phone": "020 7946 0999"}


async def ask(
    client: httpx.AsyncClient,
    world: World,
    subject: dict[str, Any],
    who: str = "hospital_client",
    **extra: Any,
) -> httpx.Response:
    body: dict[str, Any] = {
        "subject": subject,
        "purpose": "unscheduled_care",
        "reason": "attended ED",
        "enquirer": ENQUIRER,
        **extra,
    }
    if who == "duty_officer":
        body.pop("enquirer")
        body["purpose"] = "out_of_hours_referral"
    return await client.post("/v1/lookups", json=body, headers=world[who].headers)


def contact_of(world: World, authority: str) -> dict[str, str]:
    org = world.orgs[authority]
    return {"name": org.contact_name, "phone": org.contact_phone}


async def test_on_plan_discloses_status_categories_unborn_and_contact_only(
    client: httpx.AsyncClient, world: World
) -> None:
    answer = (await ask(client, world, {"nhs_number": NHS["multi"]})).json()
    assert set(answer) == ON_PLAN_KEYS
    assert answer["status"] == "on_plan"
    assert answer["categories"] == ["neglect", "emotional_abuse"]
    assert answer["unborn"] is False
    assert answer["contact"] == contact_of(world, "authority_a")


@pytest.mark.parametrize(
    "names",
    [("ZOË", "DÚBOIS"), ("zoe", "dubois"), (" Zoe ", "Du bois"), ("Zo-e", "Dubois")],
)
async def test_names_match_whatever_the_case_accents_spaces_and_hyphens(
    client: httpx.AsyncClient, world: World, names: tuple[str, str]
) -> None:
    subject = {
        "given_name": names[0],
        "family_name": names[1],
        "date_of_birth": BORN["multi"].isoformat(),
    }
    assert (await ask(client, world, subject)).json()["status"] == "on_plan"


@pytest.mark.parametrize("given", ["Zo", "Zoey", "Z"])
async def test_a_different_or_partial_name_does_not_match(
    client: httpx.AsyncClient, world: World, given: str
) -> None:
    subject = {
        "given_name": given,
        "family_name": "Dubois",
        "date_of_birth": BORN["multi"].isoformat(),
    }
    response = await ask(client, world, subject)
    assert response.status_code in {200, 422}
    assert response.json().get("status") != "on_plan"


@pytest.mark.parametrize("given", ["Zo*", "Z%", "Zo_", "Zo?", "Z0e"])
async def test_wildcards_are_refused(client: httpx.AsyncClient, world: World, given: str) -> None:
    subject = {
        "given_name": given,
        "family_name": "Dubois",
        "date_of_birth": BORN["multi"].isoformat(),
    }
    response = await ask(client, world, subject)
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"


async def test_unborn_plan_is_found_through_the_mother(
    client: httpx.AsyncClient, world: World
) -> None:
    by_nhs = (await ask(client, world, {"nhs_number": NHS["mother"]})).json()
    by_names = (
        await ask(
            client,
            world,
            {
                "given_name": "Hana",
                "family_name": "Petrova",
                "date_of_birth": BORN["mother"].isoformat(),
            },
        )
    ).json()
    for answer in (by_nhs, by_names):
        assert (answer["status"], answer["unborn"]) == ("on_plan", True)
        assert answer["categories"] == ["physical_abuse"]


async def test_two_children_with_the_same_names_and_birthday_are_referred(
    client: httpx.AsyncClient, world: World
) -> None:
    subject = {
        "given_name": "Ruby",
        "family_name": "Shah",
        "date_of_birth": BORN["dup"].isoformat(),
    }
    answer = (await ask(client, world, subject)).json()
    assert set(answer) == OTHER_KEYS
    assert answer["status"] == "refer_to_custodian"
    # The entries belong to two authorities: naming either would disclose where.
    assert answer["contact"] == DUTY


@pytest.mark.parametrize(
    "mismatch",
    [{"given_name": "Amelia"}, {"family_name": "Quinn"}, {"date_of_birth": "2001-01-01"}],
)
async def test_nhs_number_whose_entry_disagrees_is_referred(
    client: httpx.AsyncClient, world: World, mismatch: dict[str, str]
) -> None:
    answer = (await ask(client, world, {"nhs_number": NHS["neglect"], **mismatch})).json()
    assert set(answer) == OTHER_KEYS
    assert answer["status"] == "refer_to_custodian"
    assert answer["contact"] == contact_of(world, "authority_a")


async def test_names_matching_an_entry_without_that_nhs_number_are_referred(
    client: httpx.AsyncClient, world: World
) -> None:
    subject = {
        "given_name": "Idris",
        "family_name": "Wynne",
        "date_of_birth": BORN["dup"].isoformat(),
    }
    assert (await ask(client, world, subject)).json()["status"] == "on_plan"
    with_nhs = {**subject, "nhs_number": NHS["never"]}
    assert (await ask(client, world, with_nhs)).json()["status"] == "refer_to_custodian"


async def test_not_on_plan_is_identical_for_ended_other_authority_adult_and_never(
    client: httpx.AsyncClient, world: World
) -> None:
    responses = [
        await ask(client, world, {"nhs_number": NHS[key]})
        for key in ("ended_own", "ended_other", "adult", "never")
    ]
    bodies = {r.content.replace(r.json()["lookup_id"].encode(), b"ID") for r in responses}
    assert len(bodies) == 1
    assert {r.status_code for r in responses} == {200}
    headers = {
        tuple(sorted((k, v) for k, v in r.headers.items() if k != "x-request-id"))
        for r in responses
    }
    assert len(headers) == 1
    answer = responses[0].json()
    assert set(answer) == OTHER_KEYS
    assert (answer["status"], answer["contact"]) == ("not_on_plan", DUTY)


async def test_nhs_number_may_be_written_with_spaces(
    client: httpx.AsyncClient, world: World
) -> None:
    spaced = f"{NHS['neglect'][:3]} {NHS['neglect'][3:6]} {NHS['neglect'][6:]}"
    assert (await ask(client, world, {"nhs_number": spaced})).json()["status"] == "on_plan"


@pytest.mark.parametrize("nhs", ["9991000012", "999100001", "99910000ab", "0000000000x"])
async def test_malformed_nhs_numbers_are_refused_without_echo(
    client: httpx.AsyncClient, world: World, nhs: str
) -> None:
    response = await ask(client, world, {"nhs_number": nhs})
    assert response.status_code == 422
    assert nhs not in response.text


async def test_every_answer_is_audited_with_what_was_disclosed(
    client: httpx.AsyncClient, world: World, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    for who, subject in (
        ("hospital_client", {"nhs_number": NHS["multi"]}),
        ("duty_officer", {"nhs_number": NHS["never"]}),
    ):
        response = await ask(client, world, subject, who=who)
        answer = response.json()
        async with sessionmaker() as session:
            event = await session.get(AuditEvent, uuid.UUID(answer["lookup_id"]))
        assert event is not None
        assert event.event_type == "lookup"
        assert event.outcome == answer["status"]
        assert event.principal == world[who].subject
        assert event.organisation_id == world[who].organisation.id
        assert event.disclosed == {k: v for k, v in answer.items() if k != "lookup_id"}
        assert event.query["nhs_number"] == subject["nhs_number"]
        assert event.reason == "attended ED"
        assert event.request_id == response.headers["x-request-id"]
        assert event.source_address == "203.0.113.7"
        if who == "hospital_client":
            # Recorded as normalised: the id case-folded (app/lookup/schemas.py).
            assert event.enquirer == ENQUIRER | {"id": ENQUIRER["id"].casefold()}
            assert (event.entry_id, event.entry_version) == (world.entries["multi"].id, 1)
            assert event.authority_id == world.orgs["authority_a"].id
        else:
            assert event.enquirer["id"] == world[who].subject
            assert event.entry_id is None


@pytest.mark.parametrize(
    ("who", "change", "status", "refusal"),
    [
        ("hospital_client", {"enquirer": None}, 422, "enquirer_required"),
        ("duty_officer", {"enquirer": ENQUIRER}, 422, "enquirer_not_allowed"),
        ("hospital_client", {"purpose": "police_investigation"}, 403, "purpose_not_allowed"),
        ("hospital_client", {"colour": "blue"}, 422, "invalid_request"),
        ("hospital_client", {"reason": ""}, 422, "invalid_request"),
        ("custodian_a", {}, 403, "not_a_reference_point"),
        ("operator", {}, 403, "not_a_reference_point"),
    ],
)
async def test_refusals_are_audited(
    client: httpx.AsyncClient,
    world: World,
    sessionmaker: async_sessionmaker[AsyncSession],
    who: str,
    change: dict[str, Any],
    status: int,
    refusal: str,
) -> None:
    body: dict[str, Any] = {
        "subject": {"nhs_number": NHS["multi"]},
        "reason": "attended ED",
        "purpose": "out_of_hours_referral" if who == "duty_officer" else "unscheduled_care",
    }
    if who == "hospital_client":
        body["enquirer"] = ENQUIRER
    body = {k: v for k, v in {**body, **change}.items() if v is not None}
    response = await client.post("/v1/lookups", json=body, headers=world[who].headers)
    assert response.status_code == status
    assert "categories" not in response.text
    async with sessionmaker() as session:
        event = await session.scalar(
            select(AuditEvent).where(AuditEvent.request_id == response.headers["x-request-id"])
        )
    assert event is not None
    assert (event.outcome, event.refusal) == ("refused", refusal)
    assert event.principal == world[who].subject


async def test_unknown_subject_field_and_oversized_body_are_refused(
    client: httpx.AsyncClient, world: World
) -> None:
    unknown = await ask(client, world, {"nhs_number": NHS["multi"], "postcode": "N1 1AA"})
    assert unknown.status_code == 422
    big = await ask(client, world, {"nhs_number": NHS["multi"]}, reason="x" * 70_000)
    assert big.status_code == 413
    assert big.headers["content-type"] == "application/problem+json"
