"""POST /v1/lookups as a reference point sees it (README, "The lookup": need to know, and
"Legitimacy of the enquirer"): what an answer holds, how identifiers match, and
that every enquiry, answered or refused, is one audit event.

Each lookup names a fresh enquirer so that no test runs into the volume limits;
the duty officer (whose own id is the enquirer) is used sparingly for the same reason.
"""

import json
import uuid
from collections.abc import AsyncIterator
from datetime import date, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.audit.models import AuditEvent
from tests.conftest import BORN, NHS, World

ON_PLAN_KEYS = {"lookup_id", "status", "categories", "unborn", "contact"}
OTHER_KEYS = {"lookup_id", "status", "contact"}
DUTY = {"name": "Test duty desk", "phone": "020 7946 0999"}
SOURCE_ADDRESS = "203.0.113.7"  # the `client` fixture's peer address
PURPOSE = {
    "hospital_client": "unscheduled_care",
    "police_client": "police_investigation",
    "duty_officer": "out_of_hours_referral",
    "custodian_a": "safeguarding_concern",
    "operator": "safeguarding_concern",
}
USER_TOKENS = {"duty_officer", "custodian_a", "operator"}
REASON = "child attended with unexplained bruising"
# An enquirer named where none may be (a user's token): refused before anything is counted.
SOME_ENQUIRER = {"id": "c123456", "name": "Dr A Jones", "role": "ED registrar"}


def new_enquirer() -> dict[str, str]:
    # Lower case, as the service records it (enquirer ids are case-folded).
    return {"id": f"e{uuid.uuid4().hex[:12]}", "name": "Dr A Jones", "role": "ED registrar"}


def lookup_body(who: str, subject: dict[str, Any], /, **change: Any) -> dict[str, Any]:
    """A well-formed enquiry by ``who``; ``change`` overrides fields (None removes one)."""
    body: dict[str, Any] = {"subject": subject, "purpose": PURPOSE[who], "reason": REASON}
    if who not in USER_TOKENS:
        body["enquirer"] = new_enquirer()
    body.update(change)
    return {key: value for key, value in body.items() if value is not None}


async def ask(
    client: httpx.AsyncClient,
    world: World,
    subject: dict[str, Any],
    /,
    who: str = "hospital_client",
    **change: Any,
) -> httpx.Response:
    body = lookup_body(who, subject, **change)
    return await client.post("/v1/lookups", json=body, headers=world[who].headers)


async def answer_to(
    client: httpx.AsyncClient, world: World, subject: dict[str, Any], who: str = "hospital_client"
) -> dict[str, Any]:
    response = await ask(client, world, subject, who)
    assert response.status_code == 200, response.text
    return response.json()


def names(given: str, family: str, born: date) -> dict[str, str]:
    return {"given_name": given, "family_name": family, "date_of_birth": born.isoformat()}


def contact_of(world: World, authority: str) -> dict[str, str]:
    org = world.orgs[authority]
    return {"name": org.contact_name, "phone": org.contact_phone}


async def event_of(
    sessionmaker: async_sessionmaker[AsyncSession], response: httpx.Response, principal: str
) -> AuditEvent:
    """The one audit event written for this very request."""
    async with sessionmaker() as session:
        events = (
            await session.scalars(
                select(AuditEvent).where(
                    AuditEvent.request_id == response.headers["x-request-id"],
                    AuditEvent.principal == principal,
                )
            )
        ).all()
    assert len(events) == 1
    return events[0]


# --- What an answer holds ---------------------------------------------------------------


async def test_on_plan_answer_holds_only_status_categories_unborn_and_contact(
    client: httpx.AsyncClient, world: World
) -> None:
    answer = await answer_to(client, world, {"nhs_number": NHS["neglect"]})
    assert set(answer) == ON_PLAN_KEYS
    assert answer["status"] == "on_plan"
    assert answer["categories"] == ["neglect"]
    assert answer["unborn"] is False
    assert answer["contact"] == contact_of(world, "authority_a")
    assert set(answer["contact"]) == {"name", "phone"}
    uuid.UUID(answer["lookup_id"])


async def test_categories_come_in_canonical_order(client: httpx.AsyncClient, world: World) -> None:
    """The entry was made as [emotional_abuse, neglect]; the answer follows the canonical
    order neglect, physical, sexual, emotional, not the order the custodian typed."""
    answer = await answer_to(client, world, {"nhs_number": NHS["multi"]})
    assert answer["categories"] == ["neglect", "emotional_abuse"]


async def test_not_on_plan_answer_holds_only_status_and_the_duty_contact(
    client: httpx.AsyncClient, world: World
) -> None:
    answer = await answer_to(client, world, {"nhs_number": NHS["never"]})
    assert set(answer) == OTHER_KEYS
    assert answer["status"] == "not_on_plan"
    assert answer["contact"] == DUTY


async def test_refer_to_custodian_answer_holds_only_status_and_contact(
    client: httpx.AsyncClient, world: World
) -> None:
    subject = {"nhs_number": NHS["neglect"], **names("Amara", "Quinn-Lowe", BORN["multi"])}
    answer = await answer_to(client, world, subject)
    assert set(answer) == OTHER_KEYS
    assert answer["status"] == "refer_to_custodian"
    assert set(answer["contact"]) == {"name", "phone"}


# --- Matching names ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "family", "child"),
    [
        ("ZOE", "Dubois", "multi"),
        ("zoë", "DÚBOIS", "multi"),
        ("Zoe", "du bois", "multi"),
        ("Amara", "quinnlowe", "neglect"),
        ("amara", "Quinn Lowe", "neglect"),
        ("AMARA", "QUINN-LOWE", "neglect"),
    ],
)
async def test_names_match_whatever_the_case_accents_spaces_and_hyphens(
    client: httpx.AsyncClient, world: World, given: str, family: str, child: str
) -> None:
    answer = await answer_to(client, world, names(given, family, BORN[child]))
    assert answer["status"] == "on_plan"


async def test_accented_names_match_when_sent_in_decomposed_unicode(
    client: httpx.AsyncClient, world: World
) -> None:
    subject = names("Zoe\u0308", "Du\u0301bois", BORN["multi"])
    answer = await answer_to(client, world, subject)
    assert answer["status"] == "on_plan"


@pytest.mark.parametrize(
    ("given", "family"),
    [("Amaro", "Quinn-Lowe"), ("Amara", "Quinn"), ("Amara", "Lowe"), ("Amarah", "Quinn-Lowe")],
)
async def test_a_different_or_partial_name_is_not_on_plan(
    client: httpx.AsyncClient, world: World, given: str, family: str
) -> None:
    answer = await answer_to(client, world, names(given, family, BORN["neglect"]))
    assert answer["status"] == "not_on_plan"


async def test_the_right_names_with_another_date_of_birth_are_not_on_plan(
    client: httpx.AsyncClient, world: World
) -> None:
    born = BORN["neglect"] - timedelta(days=1)
    answer = await answer_to(client, world, names("Amara", "Quinn-Lowe", born))
    assert answer["status"] == "not_on_plan"


@pytest.mark.parametrize(
    ("given", "family"),
    [
        ("A", "Quinn-Lowe"),
        ("Am*", "Quinn-Lowe"),
        ("%", "Quinn-Lowe"),
        ("Amar_", "Quinn-Lowe"),
        ("Amara", "Quinn%"),
        ("Amara", "Q"),
        ("Amar?", "Quinn-Lowe"),
    ],
)
async def test_initials_and_wildcards_are_refused(
    client: httpx.AsyncClient, world: World, given: str, family: str
) -> None:
    response = await ask(client, world, names(given, family, BORN["neglect"]))
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"


async def test_an_initial_with_a_full_stop_is_refused(
    client: httpx.AsyncClient, world: World
) -> None:
    response = await ask(client, world, names("A.", "Quinn-Lowe", BORN["neglect"]))
    assert response.status_code == 422


# --- Unborn children, duplicates and partial matches --------------------------------------


async def test_unborn_plan_is_found_by_the_mothers_nhs_number(
    client: httpx.AsyncClient, world: World
) -> None:
    answer = await answer_to(client, world, {"nhs_number": NHS["mother"]})
    assert (answer["status"], answer["unborn"]) == ("on_plan", True)
    assert answer["categories"] == ["physical_abuse"]
    assert answer["contact"] == contact_of(world, "authority_a")


async def test_unborn_plan_is_found_by_the_mothers_names_and_date_of_birth(
    client: httpx.AsyncClient, world: World
) -> None:
    answer = await answer_to(client, world, names("Hana", "Petrova", BORN["mother"]))
    assert (answer["status"], answer["unborn"]) == ("on_plan", True)
    assert answer["categories"] == ["physical_abuse"]


async def test_two_children_with_the_same_names_and_birthday_are_referred_to_the_duty_contact(
    client: httpx.AsyncClient, world: World
) -> None:
    """The two entries belong to two authorities: naming either would disclose where."""
    answer = await answer_to(client, world, names("Ruby", "Shah", BORN["dup"]))
    assert set(answer) == OTHER_KEYS
    assert answer["status"] == "refer_to_custodian"
    assert answer["contact"] == DUTY


@pytest.mark.parametrize(
    "mismatch",
    [
        {"given_name": "Amelia"},
        {"family_name": "Quinn"},
        {"date_of_birth": "2001-01-01"},
        {"given_name": "Amara", "family_name": "Quinn-Lowe", "date_of_birth": "2001-01-01"},
    ],
    ids=["given_name", "family_name", "date_of_birth", "all_but_date_of_birth_agree"],
)
async def test_nhs_number_whose_entry_disagrees_with_what_was_sent_is_referred(
    client: httpx.AsyncClient, world: World, mismatch: dict[str, str]
) -> None:
    answer = await answer_to(client, world, {"nhs_number": NHS["neglect"], **mismatch})
    assert set(answer) == OTHER_KEYS
    assert answer["status"] == "refer_to_custodian"
    assert answer["contact"] == contact_of(world, "authority_a")


async def test_names_of_an_entry_without_nhs_number_sent_with_an_nhs_number_are_referred(
    client: httpx.AsyncClient, world: World
) -> None:
    subject = {"nhs_number": NHS["never"], **names("Idris", "Wynne", BORN["dup"])}
    answer = await answer_to(client, world, subject)
    assert set(answer) == OTHER_KEYS
    assert answer["status"] == "refer_to_custodian"


async def test_names_alone_find_an_entry_without_nhs_number(
    client: httpx.AsyncClient, world: World
) -> None:
    answer = await answer_to(client, world, names("Idris", "Wynne", BORN["dup"]))
    assert answer["status"] == "on_plan"
    assert answer["categories"] == ["emotional_abuse"]


async def test_nhs_number_may_be_written_with_spaces(
    client: httpx.AsyncClient, world: World
) -> None:
    assert NHS["neglect"] == "9991000011"
    answer = await answer_to(client, world, {"nhs_number": "999 100 0011"})
    assert answer["status"] == "on_plan"


# --- Nothing tells a past plan from no plan ------------------------------------------------

NOT_ON_PLAN = {
    "ended_own": {"nhs_number": NHS["ended_own"]},
    "ended_other": {"nhs_number": NHS["ended_other"]},
    "adult": {"nhs_number": NHS["adult"]},
    "never": {"nhs_number": NHS["never"]},
}


async def test_ended_plan_is_not_disclosed(client: httpx.AsyncClient, world: World) -> None:
    answer = await answer_to(client, world, {"nhs_number": NHS["ended_own"]})
    assert (answer["status"], answer["contact"]) == ("not_on_plan", DUTY)
    by_names = await answer_to(client, world, names("Tobias", "Reed", BORN["ended_own"]))
    assert by_names["status"] == "not_on_plan"


async def test_another_authoritys_ended_plan_is_not_disclosed(
    client: httpx.AsyncClient, world: World
) -> None:
    answer = await answer_to(client, world, {"nhs_number": NHS["ended_other"]})
    assert (answer["status"], answer["contact"]) == ("not_on_plan", DUTY)


async def test_a_child_who_turned_18_is_not_disclosed_although_nobody_ended_the_plan(
    client: httpx.AsyncClient, world: World
) -> None:
    answer = await answer_to(client, world, {"nhs_number": NHS["adult"]})
    assert (answer["status"], answer["contact"]) == ("not_on_plan", DUTY)
    by_names = await answer_to(client, world, names("Kai", "Morgan", BORN["adult"]))
    assert by_names["status"] == "not_on_plan"


async def test_a_never_registered_child_is_not_on_plan(
    client: httpx.AsyncClient, world: World
) -> None:
    answer = await answer_to(client, world, {"nhs_number": NHS["never"]})
    assert (answer["status"], answer["contact"]) == ("not_on_plan", DUTY)


async def test_ended_other_authority_adult_and_never_registered_answers_are_byte_identical(
    client: httpx.AsyncClient, world: World
) -> None:
    enquirer = new_enquirer()  # one enquirer, so nothing but the child differs
    responses = [
        await ask(client, world, subject, enquirer=enquirer) for subject in NOT_ON_PLAN.values()
    ]
    assert {r.status_code for r in responses} == {200}
    bodies = {r.content.replace(r.json()["lookup_id"].encode(), b"<id>") for r in responses}
    assert len(bodies) == 1
    ignored = {"x-request-id", "date", "content-length"}
    headers = [{k: v for k, v in r.headers.items() if k not in ignored} for r in responses]
    assert all(h == headers[0] for h in headers)


# --- Every answer is audited ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("subject", "matched"),
    [
        (
            {"nhs_number": "999 100 0011", **names("AMARA", "Quinn Lowe", BORN["neglect"])},
            "neglect",
        ),
        ({"nhs_number": NHS["never"]}, None),
        (names("Ruby", "Shah", BORN["dup"]), None),
        (names("Zoë", "Dúbois", BORN["multi"]), "multi"),
    ],
    ids=["on_plan", "not_on_plan", "refer_to_custodian", "on_plan_by_names"],
)
async def test_each_answer_is_audited_with_what_was_asked_and_disclosed(
    client: httpx.AsyncClient,
    world: World,
    sessionmaker: async_sessionmaker[AsyncSession],
    subject: dict[str, str],
    matched: str | None,
) -> None:
    enquirer = new_enquirer()
    response = await ask(client, world, subject, enquirer=enquirer)
    assert response.status_code == 200
    answer = response.json()
    async with sessionmaker() as session:
        event = await session.get(AuditEvent, uuid.UUID(answer["lookup_id"]))
    assert event is not None
    assert event.event_type == "lookup"
    assert event.outcome == answer["status"]
    assert event.refusal is None
    assert event.principal == world["hospital_client"].subject
    assert event.organisation_id == world.orgs["hospital"].id
    assert event.enquirer == enquirer
    assert event.enquirer_id == enquirer["id"]
    assert (event.purpose, event.reason) == ("unscheduled_care", REASON)
    assert event.disclosed == {k: v for k, v in answer.items() if k != "lookup_id"}
    assert event.request_id == response.headers["x-request-id"]
    assert event.source_address == SOURCE_ADDRESS
    if matched is None:
        assert (event.entry_id, event.entry_version) == (None, None)
    else:
        entry = world.entries[matched]
        assert (event.entry_id, event.entry_version) == (entry.id, entry.version)
        assert event.authority_id == world.orgs["authority_a"].id


async def test_the_audit_holds_the_normalised_identifiers(
    client: httpx.AsyncClient, world: World, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    subject = {"nhs_number": "999 100 0011", **names("AMARA", "Quinn Lowe", BORN["neglect"])}
    answer = await answer_to(client, world, subject)
    async with sessionmaker() as session:
        event = await session.get(AuditEvent, uuid.UUID(answer["lookup_id"]))
    assert event is not None
    assert event.query == {
        "nhs_number": "9991000011",
        "given_name": "amara",
        "family_name": "quinnlowe",
        "date_of_birth": BORN["neglect"].isoformat(),
    }


async def test_a_signed_in_users_lookup_records_the_user_as_the_enquirer(
    client: httpx.AsyncClient, world: World, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    officer = world["duty_officer"]
    response = await ask(client, world, {"nhs_number": NHS["multi"]}, who="duty_officer")
    assert response.status_code == 200
    answer = response.json()
    assert answer["status"] == "on_plan"
    async with sessionmaker() as session:
        event = await session.get(AuditEvent, uuid.UUID(answer["lookup_id"]))
    assert event is not None
    assert event.principal == officer.subject
    assert event.organisation_id == world.orgs["edt"].id
    assert event.enquirer is not None
    assert event.enquirer["id"] == event.enquirer_id == officer.subject
    assert event.enquirer["name"] == "Test duty_officer"
    assert (event.purpose, event.reason) == ("out_of_hours_referral", REASON)
    assert event.query is not None
    assert event.query["nhs_number"] == NHS["multi"]
    assert event.disclosed == {k: v for k, v in answer.items() if k != "lookup_id"}
    entry = world.entries["multi"]
    assert (event.entry_id, event.entry_version) == (entry.id, entry.version)
    assert event.source_address == SOURCE_ADDRESS


# --- Refusals are audited too ---------------------------------------------------------------

FUTURE = (date.today() + timedelta(days=30)).isoformat()
GOOD = {"nhs_number": NHS["neglect"]}

HOSPITAL = "hospital_client"
INVALID = "invalid_request"
REFUSALS = [
    pytest.param(HOSPITAL, {"enquirer": None}, 422, "enquirer_required", id="no_enquirer"),
    pytest.param(
        "duty_officer", {"enquirer": new_enquirer()}, 422, "enquirer_not_allowed", id="user_names"
    ),
    pytest.param(
        HOSPITAL, {"purpose": "police_investigation"}, 403, "purpose_not_allowed", id="ed_police"
    ),
    pytest.param(
        "police_client", {"purpose": "unscheduled_care"}, 403, "purpose_not_allowed", id="police_ed"
    ),
    pytest.param(HOSPITAL, {"purpose": "curiosity"}, 422, INVALID, id="unknown_purpose"),
    pytest.param(HOSPITAL, {"postcode": "N1 1AA"}, 422, INVALID, id="unknown_top_level_field"),
    pytest.param(
        HOSPITAL,
        {"subject": {**GOOD, "postcode": "N1 1AA"}},
        422,
        INVALID,
        id="unknown_subject_field",
    ),
    pytest.param(HOSPITAL, {"reason": None}, 422, INVALID, id="missing_reason"),
    pytest.param(HOSPITAL, {"reason": "   "}, 422, INVALID, id="blank_reason"),
    pytest.param(HOSPITAL, {"subject": None}, 422, INVALID, id="missing_subject"),
    pytest.param(
        HOSPITAL,
        {"subject": {"given_name": "Amara", "family_name": "Quinn-Lowe"}},
        422,
        INVALID,
        id="names_without_date_of_birth",
    ),
    pytest.param(
        HOSPITAL, {"subject": {"nhs_number": "9991000012"}}, 422, INVALID, id="nhs_bad_check_digit"
    ),
    pytest.param(
        HOSPITAL, {"subject": {"nhs_number": "999100001"}}, 422, INVALID, id="nhs_of_9_digits"
    ),
    pytest.param(
        HOSPITAL, {"subject": {"nhs_number": "99910000ab"}}, 422, INVALID, id="nhs_with_letters"
    ),
    pytest.param(
        HOSPITAL, {"subject": {"nhs_number": 9991000011}}, 422, INVALID, id="nhs_as_json_number"
    ),
    pytest.param(
        HOSPITAL,
        {"subject": names("Amara", "Quinn-Lowe", date.fromisoformat(FUTURE))},
        422,
        INVALID,
        id="date_of_birth_in_the_future",
    ),
]


@pytest.mark.parametrize(("who", "change", "status", "refusal"), REFUSALS)
async def test_refusals_are_audited(
    client: httpx.AsyncClient,
    world: World,
    sessionmaker: async_sessionmaker[AsyncSession],
    who: str,
    change: dict[str, Any],
    status: int,
    refusal: str,
) -> None:
    response = await ask(client, world, GOOD, who=who, **change)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    assert "categories" not in response.text
    assert "lookup_id" not in response.text
    event = await event_of(sessionmaker, response, world[who].subject)
    assert event.event_type == "lookup"
    assert (event.outcome, event.refusal) == ("refused", refusal)
    assert event.organisation_id == world[who].organisation.id
    assert event.source_address == SOURCE_ADDRESS
    assert event.disclosed is None
    assert event.entry_id is None


async def test_a_refused_purpose_is_recorded_with_the_reason_and_identifiers(
    client: httpx.AsyncClient, world: World, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    enquirer = new_enquirer()
    response = await ask(client, world, GOOD, purpose="police_investigation", enquirer=enquirer)
    assert response.status_code == 403
    event = await event_of(sessionmaker, response, world["hospital_client"].subject)
    assert event.refusal == "purpose_not_allowed"
    assert (event.purpose, event.reason) == ("police_investigation", REASON)
    assert event.enquirer == enquirer
    assert event.query is not None
    assert event.query["nhs_number"] == NHS["neglect"]


async def test_a_body_that_is_not_json_is_refused_and_audited(
    client: httpx.AsyncClient, world: World, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    headers = {**world["hospital_client"].headers, "content-type": "application/json"}
    response = await client.post(
        "/v1/lookups", content=b"nhs_number=9991000011&purpose=x", headers=headers
    )
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert NHS["neglect"] not in response.text
    event = await event_of(sessionmaker, response, world["hospital_client"].subject)
    assert (event.outcome, event.refusal) == ("refused", "invalid_request")


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", None, "application/jsonx"]
)
async def test_an_enquiry_not_sent_as_json_is_refused_and_audited(
    client: httpx.AsyncClient,
    world: World,
    sessionmaker: async_sessionmaker[AsyncSession],
    content_type: str | None,
) -> None:
    """A well-formed enquiry under another media type is not guessed at: 415, on record."""
    headers = dict(world["hospital_client"].headers)
    if content_type is not None:
        headers["content-type"] = content_type
    body = json.dumps(
        {
            "subject": {"nhs_number": NHS["neglect"]},
            "purpose": "unscheduled_care",
            "reason": REASON,
            "enquirer": {"id": "HP-415", "name": "Dr A Jones", "role": "SHO"},
        }
    )
    response = await client.post("/v1/lookups", content=body, headers=headers)
    assert response.status_code == 415
    assert response.headers["content-type"] == "application/problem+json"
    assert "on_plan" not in response.text
    assert "neglect" not in response.text
    event = await event_of(sessionmaker, response, world["hospital_client"].subject)
    assert (event.outcome, event.refusal) == ("refused", "unsupported_media_type")
    assert event.disclosed is None


@pytest.mark.parametrize("who", ["custodian_a", "operator"])
async def test_custodians_and_the_operator_may_not_look_up(
    client: httpx.AsyncClient,
    world: World,
    sessionmaker: async_sessionmaker[AsyncSession],
    who: str,
) -> None:
    response = await ask(client, world, GOOD, who=who)
    assert response.status_code == 403
    assert NHS["neglect"] not in response.text
    assert "on_plan" not in response.text
    event = await event_of(sessionmaker, response, world[who].subject)
    assert (event.event_type, event.outcome) == ("lookup", "refused")
    assert event.refusal == "not_a_reference_point"


async def test_a_lookup_without_a_token_is_401(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/lookups", json=lookup_body("hospital_client", GOOD))
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    assert "www-authenticate" in response.headers


# --- Problem documents never echo identifiers -----------------------------------------------

NEGLECT_BORN = BORN["neglect"]
ECHO_CASES = [
    pytest.param({"nhs_number": "9991000012"}, ["9991000012"], id="bad_check_digit"),
    pytest.param({"nhs_number": "99910000ab"}, ["99910000ab"], id="letters_in_nhs_number"),
    pytest.param(
        names("Amar*", "Quinn-Lowe", NEGLECT_BORN), ["Amar*", "Quinn-Lowe"], id="wildcard"
    ),
    pytest.param(
        names("Zebedee", "Q", NEGLECT_BORN), ["Zebedee", NEGLECT_BORN.isoformat()], id="initial"
    ),
    pytest.param(
        names("Amara", "Quinn-Lowe", date.fromisoformat(FUTURE)),
        ["Quinn-Lowe", FUTURE],
        id="future_birthday",
    ),
    pytest.param({**GOOD, "postcode": "N1 1AA"}, [NHS["neglect"], "N1 1AA"], id="unknown_field"),
    pytest.param(
        names("Bartholomew" * 10, "Quinn-Lowe", NEGLECT_BORN),
        ["Bartholomew", "Quinn-Lowe"],
        id="too_long_name",
    ),
]


@pytest.mark.parametrize(("subject", "sent"), ECHO_CASES)
async def test_invalid_request_problems_never_echo_the_identifiers_sent(
    client: httpx.AsyncClient, world: World, subject: dict[str, Any], sent: list[str]
) -> None:
    response = await ask(client, world, subject)
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert (problem["status"], problem["title"]) == (422, "Invalid request")
    for value in sent:
        assert value not in response.text


# --- Request size -----------------------------------------------------------------------------


async def test_a_body_over_64_kib_is_refused_with_413(
    client: httpx.AsyncClient, world: World
) -> None:
    response = await ask(client, world, GOOD, reason="x" * (64 * 1024 + 1))
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["status"] == 413
    assert "categories" not in response.text


async def test_a_streamed_body_over_64_kib_without_content_length_is_refused_with_413(
    client: httpx.AsyncClient, world: World
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"reason": "'
        for _ in range(80):
            yield b"x" * 1024
        yield b'"}'

    headers = {**world["hospital_client"].headers, "content-type": "application/json"}
    response = await client.post("/v1/lookups", content=chunks(), headers=headers)
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"


# --- "Need to know" and the matching rules (once tests/test_lookup_rules.py) ---


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
async def test_names_match_whatever_the_case_accents_spaces_and_hyphens_of_each_name(
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


async def test_nhs_number_may_be_written_in_groups_of_three_three_four(
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
        # An upper-case id, to see it recorded case-folded.
        enquirer = {**new_enquirer(), "id": f"C{uuid.uuid4().hex[:10]}"}
        change = {"enquirer": enquirer} if who == "hospital_client" else {}
        response = await ask(client, world, subject, who=who, **change)
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
        assert event.reason == REASON
        assert event.request_id == response.headers["x-request-id"]
        assert event.source_address == "203.0.113.7"
        if who == "hospital_client":
            # Recorded as normalised: the id case-folded (app/lookup/schemas.py).
            assert event.enquirer == enquirer | {"id": enquirer["id"].casefold()}
            assert (event.entry_id, event.entry_version) == (world.entries["multi"].id, 1)
            assert event.authority_id == world.orgs["authority_a"].id
        else:
            assert event.enquirer["id"] == world[who].subject
            assert event.entry_id is None


@pytest.mark.parametrize(
    ("who", "change", "status", "refusal"),
    [
        ("hospital_client", {"enquirer": None}, 422, "enquirer_required"),
        ("duty_officer", {"enquirer": SOME_ENQUIRER}, 422, "enquirer_not_allowed"),
        ("hospital_client", {"purpose": "police_investigation"}, 403, "purpose_not_allowed"),
        ("hospital_client", {"colour": "blue"}, 422, "invalid_request"),
        ("hospital_client", {"reason": ""}, 422, "invalid_request"),
        ("custodian_a", {}, 403, "not_a_reference_point"),
        ("operator", {}, 403, "not_a_reference_point"),
    ],
)
async def test_each_refusal_is_audited_with_its_code(
    client: httpx.AsyncClient,
    world: World,
    sessionmaker: async_sessionmaker[AsyncSession],
    who: str,
    change: dict[str, Any],
    status: int,
    refusal: str,
) -> None:
    body = lookup_body(who, {"nhs_number": NHS["multi"]}, **change)
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


@pytest.mark.parametrize(
    ("who", "kind", "codes"),
    [
        ("hospital_client", "emergency_department", ["unscheduled_care", "safeguarding_concern"]),
        ("police_client", "police", ["police_investigation", "safeguarding_concern"]),
        (
            "duty_officer",
            "out_of_hours_social_care",
            ["out_of_hours_referral", "safeguarding_concern"],
        ),
    ],
)
async def test_a_reference_point_is_told_the_purposes_its_kind_may_give_its_own_first(
    client: httpx.AsyncClient, world: World, who: str, kind: str, codes: list[str]
) -> None:
    response = await client.get("/v1/lookups/purposes", headers=world[who].headers)
    assert response.status_code == 200
    body = response.json()
    assert body["organisation_kind"] == kind
    assert [purpose["code"] for purpose in body["purposes"]] == codes
    assert body["default"] == codes[0]
    assert body["purposes"][0]["label"] == codes[0].replace("_", " ").capitalize()
    # Every purpose offered is one the lookup accepts from this caller.
    for code in codes:
        assert (
            await ask(client, world, {"nhs_number": NHS["never"]}, who, purpose=code)
        ).status_code == 200


@pytest.mark.parametrize("who", ["custodian_a", "operator"])
async def test_only_a_reference_point_is_told_purposes_and_a_refusal_is_audited(
    client: httpx.AsyncClient,
    world: World,
    sessionmaker: async_sessionmaker[AsyncSession],
    who: str,
) -> None:
    response = await client.get("/v1/lookups/purposes", headers=world[who].headers)
    assert response.status_code == 403
    assert response.json()["code"] == "not_a_reference_point"
    async with sessionmaker() as session:
        event = await session.scalar(
            select(AuditEvent).where(AuditEvent.request_id == response.headers["x-request-id"])
        )
    assert event is not None
    assert (event.event_type, event.refusal) == ("lookup.refused", "not_a_reference_point")
    assert (await client.get("/v1/lookups/purposes")).status_code == 401
