"""Custodians review the enquiries about their own children (README, "The audit log"):
filter, page, export CSV, see who asked about one child, and see alerts.
Nobody else may, and another authority's children stay invisible."""

import csv
import io
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.audit import alerts as alerting
from app.audit import review
from app.audit.models import AuditEvent
from app.auth.principals import Principal
from app.config import Settings
from app.db import utcnow
from app.identity.models import OrganisationKind
from app.main import create_app
from tests.conftest import BORN, NHS, World
from tests.enquiries import ask, custodian_of, enquirer_id, fresh_nhs, new_child
from tests.faults import audit_log_unwritable

# Ids that name nothing, fixed: the parameters are test ids, which every test worker
# must collect alike.
NOBODY = "6f1c2a4e-0000-4000-8000-000000000001"
AUDIT_ROUTES = [
    ("GET", "/v1/audit/events", None),
    ("POST", "/v1/audit/events/search", {}),
    ("POST", "/v1/audit/events/export", {}),
    ("GET", "/v1/audit/alerts", None),
    ("GET", f"/v1/audit/entries/{NOBODY}/enquiries", None),
    ("GET", "/v1/notifications", None),
    ("POST", f"/v1/notifications/{NOBODY}/acknowledge", None),
]


async def events(
    client: httpx.AsyncClient, headers: dict[str, str], **params: Any
) -> list[dict[str, Any]]:
    response = await client.get("/v1/audit/events", params=params, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()["items"]


async def search(client: httpx.AsyncClient, headers: dict[str, str], **body: Any) -> httpx.Response:
    return await client.post("/v1/audit/events/search", json=body, headers=headers)


async def event_of(
    sessionmaker: async_sessionmaker[AsyncSession], response: httpx.Response
) -> AuditEvent:
    async with sessionmaker() as session:
        event = await session.scalar(
            select(AuditEvent).where(AuditEvent.request_id == response.headers["x-request-id"])
        )
    assert event is not None
    return event


# --- who sees what ---------------------------------------------------------------------


async def test_custodian_sees_enquiries_about_own_children_and_never_another_authoritys(
    client: httpx.AsyncClient, world: World, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    who = enquirer_id()
    own = await ask(client, world, "hospital_client", NHS["neglect"], who)
    other = await ask(client, world, "hospital_client", NHS["dup_b"], who)
    await ask(client, world, "hospital_client", NHS["never"], who)
    assert own.json()["status"] == other.json()["status"] == "on_plan"
    # The other authority's enquiry is in the log, named as theirs: the test proves something.
    assert (await event_of(sessionmaker, other)).authority_id == world.orgs["authority_b"].id

    found = await events(client, world["custodian_a"].headers, enquirer_id=who)

    assert [e["id"] for e in found] == [own.json()["lookup_id"]]
    [event] = found
    assert event["entry_id"] == str(world.entries["neglect"].id)
    assert event["outcome"] == "on_plan"
    assert event["identifiers"]["nhs_number"] == NHS["neglect"]
    assert event["disclosed"]["categories"] == ["neglect"]
    assert event["enquirer"] == {"id": who, "name": "Dr Test", "role": "registrar"}
    assert event["organisation_name"] == world.orgs["hospital"].name
    assert {"source_address", "request_id", "principal", "detail"}.isdisjoint(event)


async def test_another_authoritys_custodian_sees_only_theirs(
    app: FastAPI,
    client: httpx.AsyncClient,
    world: World,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    custodian_b = await custodian_of(app, sessionmaker, world.orgs["authority_b"])
    who = enquirer_id()
    await ask(client, world, "hospital_client", NHS["neglect"], who)
    theirs = await ask(client, world, "hospital_client", NHS["dup_b"], who)

    found = await events(client, custodian_b, enquirer_id=who)

    assert [e["id"] for e in found] == [theirs.json()["lookup_id"]]


async def test_search_by_the_childs_nhs_number_travels_in_the_body(
    client: httpx.AsyncClient, world: World, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    entry, nhs = await new_child(sessionmaker, world.orgs["authority_a"])
    who = enquirer_id()
    by_number = await ask(client, world, "hospital_client", nhs, who)
    by_names = await ask(
        client,
        world,
        "hospital_client",
        {
            "given_name": entry.child_given_name,
            "family_name": entry.child_family_name,
            "date_of_birth": entry.child_date_of_birth.isoformat(),  # type: ignore[union-attr]
        },
        who,
    )
    await ask(client, world, "hospital_client", NHS["neglect"], who)
    spaced = f"{nhs[:3]} {nhs[3:6]} {nhs[6:]}"

    response = await search(client, world["custodian_a"].headers, nhs_number=spaced)

    assert response.status_code == 200
    # Newest first, each once: the lookup by number both asked with it and was answered
    # with the entry.
    ids = [e["id"] for e in response.json()["items"]]
    assert ids == [by_names.json()["lookup_id"], by_number.json()["lookup_id"]]
    # Reading the log is itself on record: who looked, for which child.
    read = await event_of(sessionmaker, response)
    assert (read.event_type, read.principal) == ("audit.read", world["custodian_a"].subject)
    assert read.query == {"nhs_number": nhs}
    assert read.detail["path"] == "/v1/audit/events/search"


async def test_a_childs_enquiries_page_newest_first_however_each_found_it(
    client: httpx.AsyncClient, world: World, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    """By NHS number and on the entry's own page, the enquiries by number and by names
    and date of birth (each found from an index of its own) interleave newest first,
    page after page, none twice and none left out."""
    entry, nhs = await new_child(sessionmaker, world.orgs["authority_a"])
    by_names = {
        "given_name": entry.child_given_name,
        "family_name": entry.child_family_name,
        "date_of_birth": entry.child_date_of_birth.isoformat(),  # type: ignore[union-attr]
    }
    asked = [
        (await ask(client, world, "hospital_client", nhs if n % 3 else by_names)).json()
        for n in range(7)
    ]
    newest_first = [answer["lookup_id"] for answer in reversed(asked)]
    headers = world["custodian_a"].headers

    async def pages(read: Any) -> list[list[str]]:
        found, cursor = [], None
        while True:
            page = (await read(cursor)).json()
            found.append([e["id"] for e in page["items"]])
            cursor = page["next_cursor"]
            if cursor is None:
                return found

    async def by_number(cursor: str | None) -> httpx.Response:
        body = {"nhs_number": nhs, "limit": 3} | ({"cursor": cursor} if cursor else {})
        return await search(client, headers, **body)

    async def on_the_entry(cursor: str | None) -> httpx.Response:
        params = {"limit": 3} | ({"cursor": cursor} if cursor else {})
        path = f"/v1/audit/entries/{entry.id}/enquiries"
        return await client.get(path, params=params, headers=headers)

    expected = [newest_first[:3], newest_first[3:6], newest_first[6:]]
    assert await pages(by_number) == expected
    assert await pages(on_the_entry) == expected


async def test_searching_for_another_authoritys_child_finds_nothing(
    client: httpx.AsyncClient, world: World
) -> None:
    await ask(client, world, "hospital_client", NHS["dup_b"])
    response = await search(client, world["custodian_a"].headers, nhs_number=NHS["dup_b"])
    assert response.status_code == 200
    assert response.json() == {"items": [], "next_cursor": None}


async def test_an_nhs_number_in_the_query_string_is_refused(
    client: httpx.AsyncClient, world: World
) -> None:
    response = await client.get(
        "/v1/audit/events",
        params={"nhs_number": NHS["neglect"]},
        headers=world["custodian_a"].headers,
    )
    assert response.status_code == 422
    assert NHS["neglect"] not in response.text


@pytest.mark.parametrize(
    "body",
    [{"nhs_number": "9991000012"}, {"child": "x"}, {"limit": 501}, {"from": "2024-01-01T00:00"}],
)
async def test_a_search_that_is_not_exact_is_refused(
    client: httpx.AsyncClient, world: World, body: dict[str, Any]
) -> None:
    response = await search(client, world["custodian_a"].headers, **body)
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize("who", ["hospital_client", "police_client", "duty_officer", "operator"])
@pytest.mark.parametrize(("method", "path", "body"), AUDIT_ROUTES)
async def test_only_custodians_may_review_and_a_refusal_is_audited(
    client: httpx.AsyncClient,
    world: World,
    sessionmaker: async_sessionmaker[AsyncSession],
    who: str,
    method: str,
    path: str,
    body: dict[str, Any] | None,
) -> None:
    response = await client.request(method, path, json=body, headers=world[who].headers)
    assert response.status_code == 403
    event = await event_of(sessionmaker, response)
    assert (event.event_type, event.outcome) == ("audit.refused", "refused")
    assert event.principal == world[who].subject


async def test_no_token_is_401(client: httpx.AsyncClient) -> None:
    assert (await client.get("/v1/audit/events")).status_code == 401


# --- who asked about this child --------------------------------------------------------


async def test_who_asked_about_this_child(
    client: httpx.AsyncClient, world: World, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    entry, nhs = await new_child(sessionmaker, world.orgs["authority_a"])
    hospital = await ask(client, world, "hospital_client", nhs)
    police = await ask(client, world, "police_client", nhs)
    # The right number with the wrong date of birth: for a custodian to resolve.
    unsure = await ask(
        client,
        world,
        "duty_officer",
        {
            "nhs_number": nhs,
            "given_name": "Someone",
            "family_name": "Else",
            "date_of_birth": "2015-01-01",
        },
    )
    assert unsure.json()["status"] == "refer_to_custodian"
    await ask(client, world, "hospital_client", NHS["neglect"])

    response = await client.get(
        f"/v1/audit/entries/{entry.id}/enquiries", headers=world["custodian_a"].headers
    )

    assert response.status_code == 200
    items = response.json()["items"]
    assert [e["id"] for e in items] == [r.json()["lookup_id"] for r in (unsure, police, hospital)]
    # What a custodian needs to resolve it: which of their entries it matched.
    assert (items[0]["entry_id"], items[0]["matched_entry_ids"]) == (None, [str(entry.id)])


@pytest.mark.parametrize("which", ["dup_b", "ended_other", "nonexistent"])
async def test_another_authoritys_child_is_not_found_and_the_refusal_is_audited(
    client: httpx.AsyncClient,
    world: World,
    sessionmaker: async_sessionmaker[AsyncSession],
    which: str,
) -> None:
    entry_id = world.entries[which].id if which in world.entries else uuid.uuid4()
    custodian = world["custodian_a"]
    response = await client.get(
        f"/v1/audit/entries/{entry_id}/enquiries", headers=custodian.headers
    )
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    event = await event_of(sessionmaker, response)
    assert (event.event_type, event.outcome) == ("audit.refused", "refused")
    assert event.refusal == "entry_not_found"
    assert (event.principal, event.organisation_id) == (
        custodian.subject,
        custodian.organisation.id,
    )
    assert event.detail is not None
    assert event.detail["entry_id"] == str(entry_id)
    # Nothing of the other authority is put on the custodian's record.
    assert event.authority_id is None
    assert event.entry_id is None


async def test_another_authoritys_child_and_a_random_id_get_the_same_404(
    client: httpx.AsyncClient, world: World
) -> None:
    headers = world["custodian_a"].headers
    theirs, nobodys = world.entries["dup_b"].id, uuid.uuid4()
    answers = [
        await client.get(f"/v1/audit/entries/{entry_id}/enquiries", headers=headers)
        for entry_id in (theirs, nobodys)
    ]
    assert [a.status_code for a in answers] == [404, 404]
    assert answers[0].content == answers[1].content
    varying = {"x-request-id", "date", "content-length"}

    def fixed(response: httpx.Response) -> dict[str, str]:
        return {k: v for k, v in response.headers.items() if k not in varying}

    assert fixed(answers[0]) == fixed(answers[1])


async def test_the_404_is_not_answered_unless_its_refusal_is_recorded(
    client: httpx.AsyncClient,
    world: World,
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    admin_sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    entry_id = world.entries["dup_b"].id
    async with audit_log_unwritable(admin_sessionmaker, settings):
        response = await client.get(
            f"/v1/audit/entries/{entry_id}/enquiries", headers=world["custodian_a"].headers
        )
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"


# --- paging and filters ----------------------------------------------------------------


async def test_pages_newest_first_without_gaps_or_repeats(
    client: httpx.AsyncClient, world: World
) -> None:
    who = enquirer_id()
    asked = [
        (await ask(client, world, "hospital_client", NHS["multi"], who)).json()["lookup_id"]
        for _ in range(5)
    ]
    seen: list[str] = []
    sizes = []
    params: dict[str, Any] = {"enquirer_id": who, "limit": 2}
    while True:
        response = await client.get(
            "/v1/audit/events", params=params, headers=world["custodian_a"].headers
        )
        page = response.json()
        sizes.append(len(page["items"]))
        seen.extend(e["id"] for e in page["items"])
        if page["next_cursor"] is None:
            break
        params["cursor"] = page["next_cursor"]
    assert sizes == [2, 2, 1]
    assert seen == list(reversed(asked))


async def _pages(
    client: httpx.AsyncClient, headers: dict[str, str], params: dict[str, Any]
) -> list[list[str]]:
    pages = []
    while True:
        page = (await client.get("/v1/audit/events", params=params, headers=headers)).json()
        pages.append([item["id"] for item in page["items"]])
        if page["next_cursor"] is None:
            return pages
        params = {**params, "cursor": page["next_cursor"]}


async def test_referrals_that_matched_two_authorities_page_in_order_for_both(
    client: httpx.AsyncClient, world: World
) -> None:
    """Answers that matched entries of two authorities (walked by their link rows' time,
    migration 0016) take their place in each authority's pages among its own: newest
    first, none lost or repeated across pages, and cut by the period on both halves."""
    who = enquirer_id()
    twins = {"given_name": "Ruby", "family_name": "Shah", "date_of_birth": BORN["dup"].isoformat()}
    asked = []
    for subject in (twins, NHS["multi"], twins, twins, NHS["multi"], twins):
        response = await ask(client, world, "hospital_client", subject, who)
        asked.append((subject is twins, response.json()["lookup_id"]))
    newest_first = [lookup for _, lookup in reversed(asked)]
    linked = [lookup for twin, lookup in reversed(asked) if twin]
    pages = await _pages(client, world["custodian_a"].headers, {"enquirer_id": who, "limit": 2})
    assert pages == [newest_first[0:2], newest_first[2:4], newest_first[4:6]]
    # Authority B's entry matched only the twins' lookups: its own pages hold just those.
    pages = await _pages(client, world["custodian_b"].headers, {"enquirer_id": who, "limit": 3})
    assert pages == [linked[0:3], linked[3:4]]
    # The period cuts the linked ones as it cuts the authority's own.
    response = await client.get(
        "/v1/audit/events",
        params={"enquirer_id": who, "to": "2000-01-01T00:00:00Z"},
        headers=world["custodian_b"].headers,
    )
    assert response.json()["items"] == []
    export = await client.post(
        "/v1/audit/events/export", json={"enquirer_id": who}, headers=world["custodian_b"].headers
    )
    rows = list(csv.DictReader(io.StringIO(export.text)))
    assert [row["event_id"] for row in rows] == linked
    assert {row["outcome"] for row in rows} == {"refer_to_custodian"}
    assert all(row["matched_entry_ids"] for row in rows)


async def test_the_search_pages_the_same_way(client: httpx.AsyncClient, world: World) -> None:
    who = enquirer_id()
    for _ in range(3):
        await ask(client, world, "hospital_client", NHS["multi"], who)
    headers = world["custodian_a"].headers
    first = (await search(client, headers, enquirer_id=who, limit=2)).json()
    second = (
        await search(client, headers, enquirer_id=who, limit=2, cursor=first["next_cursor"])
    ).json()
    assert len(first["items"]) == 2
    assert len(second["items"]) == 1
    assert second["next_cursor"] is None


@pytest.mark.parametrize("cursor", ["not-a-cursor", "W10", "WyJ4IiwieSJd"])
async def test_a_forged_cursor_is_refused(
    client: httpx.AsyncClient, world: World, cursor: str
) -> None:
    response = await client.get(
        "/v1/audit/events", params={"cursor": cursor}, headers=world["custodian_a"].headers
    )
    assert response.status_code == 422


async def test_filters_by_organisation_purpose_outcome_entry_and_time(
    client: httpx.AsyncClient, world: World
) -> None:
    who = enquirer_id()  # the same staff id at two organisations: two people
    headers = world["custodian_a"].headers
    before = utcnow()
    hospital = await ask(client, world, "hospital_client", NHS["neglect"], who)
    concern = await ask(
        client, world, "hospital_client", NHS["multi"], who, purpose="safeguarding_concern"
    )
    police = await ask(client, world, "police_client", NHS["neglect"], who)
    unsure = await ask(
        client,
        world,
        "police_client",
        {"nhs_number": NHS["multi"], "given_name": "Wrong", "family_name": "Name"},
        who,
    )
    after = utcnow()
    ids = {
        name: r.json()["lookup_id"]
        for name, r in {
            "hospital": hospital,
            "concern": concern,
            "police": police,
            "unsure": unsure,
        }.items()
    }

    async def found(**params: Any) -> set[str]:
        return {e["id"] for e in await events(client, headers, enquirer_id=who, **params)}

    assert await found() == set(ids.values())
    hospital_id = str(world.orgs["hospital"].id)
    assert await found(organisation_id=hospital_id) == {ids["hospital"], ids["concern"]}
    assert await found(purpose="safeguarding_concern") == {ids["concern"]}
    assert await found(outcome="refer_to_custodian") == {ids["unsure"]}
    assert await found(entry_id=str(world.entries["neglect"].id)) == {
        ids["hospital"],
        ids["police"],
    }
    assert await found(**{"from": after.isoformat()}) == set()
    assert await found(**{"from": before.isoformat(), "to": after.isoformat()}) == set(ids.values())
    assert await found(to=before.isoformat()) == set()


# --- CSV export ------------------------------------------------------------------------


async def test_export_streams_csv_and_is_itself_audited(
    client: httpx.AsyncClient, world: World, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    who = enquirer_id()
    asked = [
        (await ask(client, world, "hospital_client", NHS[key], who)).json()["lookup_id"]
        for key in ("neglect", "multi", "dup_b")
    ]

    response = await client.post(
        "/v1/audit/events/export",
        json={"enquirer_id": who},
        headers=world["custodian_a"].headers,
    )

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert "attachment" in response.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert [row["event_id"] for row in rows] == [asked[1], asked[0]]  # not B's child
    assert rows[0]["nhs_number"] == NHS["multi"]
    assert rows[0]["disclosed_categories"] == "neglect;emotional_abuse"
    assert rows[0]["organisation_name"] == world.orgs["hospital"].name
    # What was disclosed, cell by cell as the event says it (both databases spell a JSON
    # boolean differently when they read it out).
    listed = {e["id"]: e for e in await events(client, world["custodian_a"].headers)}
    for row in rows:
        disclosed = listed[row["event_id"]]["disclosed"]
        unborn = disclosed.get("unborn")
        assert row["disclosed_status"] == disclosed["status"] == "on_plan"
        assert row["disclosed_unborn"] == ("" if unborn is None else str(unborn)), disclosed
        assert row["disclosed_categories"] == ";".join(disclosed.get("categories") or ())
    export = await event_of(sessionmaker, response)
    assert export.event_type == "audit.exported"
    assert export.principal == world["custodian_a"].subject
    assert export.detail == {"filters": {"enquirer_id": who}}


async def test_an_export_by_nhs_number_records_the_number_asked_for(
    client: httpx.AsyncClient, world: World, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    """And holds the child's enquiries the search lists, in its order: the one-child
    read (a walk per way of finding the child, merged), here for a child with entries in
    two authorities."""
    who = enquirer_id()
    for _ in range(2):
        await ask(client, world, "hospital_client", NHS["multi"], who)
    headers = world["custodian_a"].headers
    response = await client.post(
        "/v1/audit/events/export", json={"nhs_number": NHS["multi"]}, headers=headers
    )
    assert response.status_code == 200
    export = await event_of(sessionmaker, response)
    assert export.query == {"nhs_number": NHS["multi"]}
    rows = list(csv.DictReader(io.StringIO(response.text)))
    listed = await search(client, headers, nhs_number=NHS["multi"], limit=500)
    assert [row["event_id"] for row in rows] == [item["id"] for item in listed.json()["items"]]
    assert [row["nhs_number"] for row in rows if row["enquirer_id"] == who] == [NHS["multi"]] * 2
    assert {row["matched_entry_ids"] for row in rows if row["enquirer_id"] == who} != {""}


async def test_exported_cells_cannot_become_spreadsheet_formulas(
    client: httpx.AsyncClient, world: World
) -> None:
    who = enquirer_id()
    await ask(client, world, "hospital_client", NHS["neglect"], who, name="=HYPERLINK(evil)")
    response = await client.post(
        "/v1/audit/events/export", json={"enquirer_id": who}, headers=world["custodian_a"].headers
    )
    [row] = list(csv.DictReader(io.StringIO(response.text)))
    assert row["enquirer_name"] == "'=HYPERLINK(evil)"


@pytest.mark.parametrize(
    "name",
    ['Dr "Quote", Jr.', "Dr Back\\slash", "Dr Ünïcødé 李 🩺", 'Dr {"id": "not json"}'],
    ids=["quotes-comma", "backslash", "unicode", "json-like"],
)
async def test_exported_text_is_what_was_asked_and_what_the_api_lists(
    client: httpx.AsyncClient, world: World, name: str
) -> None:
    """The export reads the enquirer's name out of the stored JSON in the database (on
    PostgreSQL parsed once as jsonb): escapes and non-ASCII text come out as asked."""
    who = enquirer_id()
    await ask(client, world, "hospital_client", NHS["neglect"], who, name=name)
    headers = world["custodian_a"].headers
    response = await client.post(
        "/v1/audit/events/export", json={"enquirer_id": who}, headers=headers
    )
    listed = await client.get("/v1/audit/events", params={"enquirer_id": who}, headers=headers)
    [row] = list(csv.DictReader(io.StringIO(response.text)))
    [item] = listed.json()["items"]
    assert row["enquirer_name"] == name == item["enquirer"]["name"]
    assert row["enquirer_id"] == who
    assert row["disclosed_status"] == "on_plan"
    assert row["disclosed_categories"] == ";".join(item["disclosed"]["categories"])


def custodian_a(world: World) -> Principal:
    """A custodian of authority A, as the routes' dependencies make one, to call the
    review's functions directly."""
    return Principal(
        kind="user",
        id="x",
        display_name="x",
        role=None,
        organisation_id=world.orgs["authority_a"].id,
        organisation_kind=OrganisationKind.local_authority,
        organisation_name="x",
        scopes=frozenset(),
    )


@pytest.mark.parametrize("body", [{}, {"nhs_number": NHS["multi"]}], ids=["filters", "nhs"])
async def test_an_export_leaves_no_transaction_of_the_request_open_while_it_streams(
    app: FastAPI,
    world: World,
    sessionmaker: async_sessionmaker[AsyncSession],
    body: dict[str, Any],
) -> None:
    """The request's session is closed only once the CSV has been sent: on SQLite a
    transaction left open on it would hold, for the whole download, the write lock that
    every lookup needs."""
    custodian = custodian_a(world)
    request = Request(
        {
            "type": "http",
            "method": "POST",
            "scheme": "http",
            "server": ("127.0.0.1", 80),
            "client": ("127.0.0.1", 40000),
            "path": "/v1/audit/events/export",
            "query_string": b"",
            "headers": [],
            "app": app,
        }
    )
    async with sessionmaker() as session:
        chunks, _ = await review.export_csv(
            session, request, custodian, review.EnquiryExport.model_validate(body)
        )
        assert not session.in_transaction()
        sent = "".join([chunk async for chunk in chunks])
        assert sent.startswith("event_id,")


async def test_export_reads_and_sends_in_chunks(
    client: httpx.AsyncClient,
    world: World,
    sessionmaker: async_sessionmaker[AsyncSession],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    who = enquirer_id()
    for _ in range(5):
        await ask(client, world, "hospital_client", NHS["neglect"], who)
    monkeypatch.setattr(review, "EXPORT_CHUNK", 2)
    custodian = custodian_a(world)
    statement = review.filtered(
        review.readable_enquiries(custodian), review.EnquiryFilters(enquirer_id=who), custodian
    )
    chunks = [
        chunk async for chunk in review._csv(sessionmaker, statement, custodian.organisation_id)
    ]
    assert [chunk.count("\n") for chunk in chunks] == [1, 2, 2, 1]


# --- alerts ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
async def watchful(settings: Settings) -> AsyncIterator[FastAPI]:
    """A replica with small alert thresholds and an enquirer volume limit of 4."""
    small = settings.model_copy(
        update={
            "alert_not_found_threshold": 3,
            "alert_not_found_window_minutes": 60,
            "alert_repeat_sites_threshold": 2,
            "alert_repeat_days": 7,
            "lookup_limit_per_enquirer": 4,
        }
    )
    app = create_app(small)
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture
async def watchful_client(watchful: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=watchful)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        yield http


async def alerts_for(
    client: httpx.AsyncClient, headers: dict[str, str], **params: Any
) -> list[dict[str, Any]]:
    response = await client.get("/v1/audit/alerts", params=params, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()["alerts"]


def of_enquirer(alerts: list[dict[str, Any]], who: str) -> list[dict[str, Any]]:
    return [a for a in alerts if a["enquirer"] and a["enquirer"]["id"] == who]


async def test_many_not_found_answers_to_one_enquirer_raise_an_alert(
    watchful_client: httpx.AsyncClient, world: World
) -> None:
    prober, careful = enquirer_id(), enquirer_id()
    for _ in range(3):
        await ask(watchful_client, world, "hospital_client", fresh_nhs(), prober)
    for _ in range(2):
        await ask(watchful_client, world, "hospital_client", fresh_nhs(), careful)

    alerts = await alerts_for(watchful_client, world["custodian_a"].headers)

    [alert] = of_enquirer(alerts, prober)
    assert alert["kind"] == "not_found_spike"
    assert (alert["count"], alert["threshold"]) == (3, 3)
    assert alert["organisations"] == [
        {"id": str(world.orgs["hospital"].id), "name": world.orgs["hospital"].name}
    ]
    assert alert["principal"] == world["hospital_client"].subject
    assert alert["entry_id"] is None
    assert of_enquirer(alerts, careful) == []


@pytest.mark.parametrize("few", [alerting.FEW_SUSPECTS, 0], ids=["by period", "by spans"])
async def test_a_spike_is_found_wherever_its_window_falls_and_only_if_one_window_holds_it(
    watchful_client: httpx.AsyncClient,
    world: World,
    sessionmaker: async_sessionmaker[AsyncSession],
    monkeypatch: pytest.MonkeyPatch,
    few: int,
) -> None:
    """A spike across the hour is found with its count and window; three not-found
    answers spread over 70 minutes are not one, nor three whose first is exactly the
    window (60 minutes) before the last, while a microsecond under it is; and of seven
    over five hours only the three within two minutes are. Whether the groups to read
    were chosen by their count over the period, or (as when more than FEW_SUSPECTS are
    over the threshold) by their counts in consecutive window-long spans, clock hours."""
    monkeypatch.setattr(alerting, "FEW_SUSPECTS", few)
    hour = utcnow().replace(minute=0, second=0, microsecond=0) - timedelta(hours=3)
    across, spread, exact, inside, busy = (enquirer_id() for _ in range(5))
    minute, tick = timedelta(minutes=1), timedelta(microseconds=1)
    timings = {
        across: (-10 * minute, -5 * minute, 5 * minute),  # three within 15 minutes
        spread: (-55 * minute, -50 * minute, 20 * minute),  # never three in 60 minutes
        exact: (0 * minute, 30 * minute, 60 * minute),  # (t - 60 minutes, t]: two in it
        inside: (tick, 30 * minute, 60 * minute),  # three
        busy: tuple(n * minute for n in (-150, -90, -30, 30, 90, 91, 92)),  # 3 in 2 min
    }
    rows = [
        {
            "id": uuid.uuid4(),
            "occurred_at": hour + offset,
            "event_type": "lookup",
            "principal": world["hospital_client"].subject,
            "organisation_id": world.orgs["hospital"].id,
            "enquirer": {"id": who, "name": "Dr A Jones"},
            "enquirer_id": who,
            "purpose": "unscheduled_care",
            "outcome": "not_on_plan",
        }
        for who, offsets in timings.items()
        for offset in offsets
    ]
    async with sessionmaker() as session:
        await session.execute(insert(AuditEvent.__table__), rows)
        await session.commit()

    alerts = await alerts_for(watchful_client, world["custodian_a"].headers)

    def window(alert: dict[str, Any]) -> list[datetime]:
        return [datetime.fromisoformat(alert[end]) for end in ("window_start", "window_end")]

    [alert] = of_enquirer(alerts, across)
    assert (alert["kind"], alert["count"]) == ("not_found_spike", 3)
    assert window(alert) == [hour - 10 * minute, hour + 5 * minute]
    assert of_enquirer(alerts, spread) == []
    assert of_enquirer(alerts, exact) == []
    [alert] = of_enquirer(alerts, inside)
    assert alert["count"] == 3
    assert window(alert) == [hour + tick, hour + 60 * minute]
    [alert] = of_enquirer(alerts, busy)
    assert alert["count"] == 3
    assert window(alert) == [hour + 90 * minute, hour + 92 * minute]


async def test_lookups_refused_at_the_volume_limit_raise_an_alert(
    watchful_client: httpx.AsyncClient, world: World
) -> None:
    who = enquirer_id()
    statuses = [
        (await ask(watchful_client, world, "hospital_client", NHS["neglect"], who)).status_code
        for _ in range(6)
    ]
    assert statuses == [200] * 4 + [429] * 2

    alerts = await alerts_for(watchful_client, world["custodian_a"].headers)

    [alert] = [a for a in of_enquirer(alerts, who) if a["kind"] == "volume_limit_enquirer"]
    assert alert["count"] == 2
    assert alert["window_start"] <= alert["window_end"]


async def test_a_purpose_the_organisation_may_not_give_raises_an_alert(
    watchful_client: httpx.AsyncClient, world: World
) -> None:
    who = enquirer_id()
    refused = await ask(
        watchful_client,
        world,
        "hospital_client",
        NHS["neglect"],
        who,
        purpose="police_investigation",
    )
    assert refused.status_code == 403

    alerts = await alerts_for(watchful_client, world["custodian_a"].headers)

    [alert] = of_enquirer(alerts, who)
    assert alert["kind"] == "purpose_not_allowed"
    # In words, and in the singular for one.
    assert alert["detail"].startswith('1 lookup was refused for giving the purpose "Police')


async def test_each_enquirer_refused_is_an_alert_naming_them_as_they_last_gave_their_name(
    watchful_client: httpx.AsyncClient, world: World
) -> None:
    """Refusals by many enquirer ids (as a client inventing them sends) are an alert
    each, in one read, each naming its enquirer as the latest refusal did."""
    names = {enquirer_id(): f"Dr {n}" for n in range(6)}
    for who, name in names.items():
        for given in ("Dr Earlier", name):
            refused = await ask(
                watchful_client,
                world,
                "hospital_client",
                NHS["neglect"],
                who,
                purpose="police_investigation",
                name=given,
            )
            assert refused.status_code == 403

    alerts = await alerts_for(watchful_client, world["custodian_a"].headers)

    for who, name in names.items():
        [alert] = of_enquirer(alerts, who)
        assert (alert["kind"], alert["count"]) == ("purpose_not_allowed", 2)
        assert alert["enquirer"]["name"] == name
        assert alert["window_start"] < alert["window_end"]


async def test_one_child_looked_up_by_several_sites_raises_an_alert_for_its_authority_only(
    app: FastAPI,
    watchful_client: httpx.AsyncClient,
    world: World,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    entry, nhs = await new_child(sessionmaker, world.orgs["authority_a"])
    headers = world["custodian_a"].headers
    await ask(watchful_client, world, "hospital_client", nhs)
    await ask(watchful_client, world, "hospital_client", nhs)

    def about_entry(alerts: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [a for a in alerts if a["entry_id"] == str(entry.id)]

    assert about_entry(await alerts_for(watchful_client, headers)) == []  # one site only

    await ask(watchful_client, world, "police_client", nhs)
    [alert] = about_entry(await alerts_for(watchful_client, headers))

    assert alert["kind"] == "repeat_presentation"
    assert alert["count"] == 2
    assert {o["id"] for o in alert["organisations"]} == {
        str(world.orgs["hospital"].id),
        str(world.orgs["police"].id),
    }
    custodian_b = await custodian_of(app, sessionmaker, world.orgs["authority_b"])
    assert about_entry(await alerts_for(watchful_client, custodian_b)) == []


async def test_enquirer_alerts_reach_every_custodian(
    app: FastAPI,
    watchful_client: httpx.AsyncClient,
    world: World,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    """Enumeration threatens every authority's children; the alert names no child."""
    prober = enquirer_id()
    for _ in range(3):
        await ask(watchful_client, world, "police_client", fresh_nhs(), prober)
    custodian_b = await custodian_of(app, sessionmaker, world.orgs["authority_b"])
    [alert] = of_enquirer(await alerts_for(watchful_client, custodian_b), prober)
    assert alert["kind"] == "not_found_spike"


async def test_alerts_cover_only_the_period_asked_for(
    watchful_client: httpx.AsyncClient, world: World
) -> None:
    prober = enquirer_id()
    for _ in range(3):
        await ask(watchful_client, world, "hospital_client", fresh_nhs(), prober)
    earlier = utcnow() - timedelta(days=2)
    alerts = await alerts_for(
        watchful_client,
        world["custodian_a"].headers,
        **{"from": (earlier - timedelta(days=1)).isoformat(), "to": earlier.isoformat()},
    )
    assert of_enquirer(alerts, prober) == []


async def test_alerts_over_a_period_too_long_are_refused(
    client: httpx.AsyncClient, world: World
) -> None:
    now = utcnow()
    response = await client.get(
        "/v1/audit/alerts",
        params={"from": (now - timedelta(days=40)).isoformat(), "to": now.isoformat()},
        headers=world["custodian_a"].headers,
    )
    assert response.status_code == 422


async def test_default_thresholds_do_not_fire_on_a_few_lookups(
    client: httpx.AsyncClient, world: World
) -> None:
    prober = enquirer_id()
    for _ in range(3):
        await ask(client, world, "hospital_client", fresh_nhs(), prober)
    assert of_enquirer(await alerts_for(client, world["custodian_a"].headers), prober) == []
