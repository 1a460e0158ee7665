"""Broken object-level authorisation: a custodian of authority B cannot read, change,
end, review, record a birth on, search, list, import into or export authority A's
entries, and nobody but a custodian may use the register endpoints at all."""

import uuid

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.audit.models import AuditEvent
from tests.conftest import NHS, World

ENTRIES = "/v1/register/entries"


def _routes(entry_id: uuid.UUID) -> list[tuple[str, str, dict[str, object] | None]]:
    url = f"{ENTRIES}/{entry_id}"
    return [
        ("GET", url, None),
        ("GET", f"{url}/history", None),
        ("PATCH", url, {"notes": "taken over", "reason": "attack"}),
        ("POST", f"{url}/end", {"reason": "died", "ended_on": "2026-01-01"}),
        ("POST", f"{url}/reviews", {"held_on": "2026-01-01"}),
        (
            "POST",
            f"{url}/birth",
            {
                "child": {
                    "given_name": "Eve",
                    "family_name": "Attack",
                    "date_of_birth": "2026-01-01",
                }
            },
        ),
    ]


@pytest.mark.parametrize("route", range(6))
async def test_another_authoritys_entry_is_not_found_exactly_like_no_entry(
    client: httpx.AsyncClient,
    world: World,
    sessionmaker: async_sessionmaker[AsyncSession],
    route: int,
) -> None:
    theirs = world.entries["neglect"]  # authority A's
    method, url, body = _routes(theirs.id)[route]
    headers = {**world["custodian_b"].headers, "If-Match": f'"{theirs.version}"'}
    attack = await client.request(method, url, json=body, headers=headers)
    method, nowhere, body = _routes(uuid.uuid4())[route]
    missing = await client.request(method, nowhere, json=body, headers=headers)
    assert attack.status_code == missing.status_code == 404
    assert attack.json() == missing.json()
    async with sessionmaker() as session:
        event = await session.scalar(
            select(AuditEvent).where(AuditEvent.request_id == attack.headers["x-request-id"])
        )
    assert event is not None
    assert (event.event_type, event.refusal) == ("register.refused", "entry_not_found")
    assert event.principal == world["custodian_b"].subject
    # Nothing changed: A's entry is still as it was.
    read = await client.get(f"{ENTRIES}/{theirs.id}", headers=world["custodian_a"].headers)
    assert read.json()["version"] == theirs.version
    assert read.json()["status"] == "active"


async def test_lists_searches_and_exports_hold_only_your_own_authoritys_children(
    client: httpx.AsyncClient, world: World
) -> None:
    headers = world["custodian_b"].headers
    listed = await client.get(ENTRIES, params={"status": "all", "limit": 200}, headers=headers)
    assert {e["authority_id"] for e in listed.json()["items"]} == {
        str(world.orgs["authority_b"].id)
    }
    found = await client.post(
        f"{ENTRIES}/search", json={"nhs_number": NHS["neglect"]}, headers=headers
    )
    assert found.status_code == 200
    assert found.json() == []
    export = await client.post("/v1/register/exports", headers=headers)
    assert export.status_code == 200
    assert NHS["neglect"] not in export.text
    assert NHS["dup_b"] in export.text


@pytest.mark.parametrize("who", ["hospital_client", "police_client", "duty_officer", "operator"])
async def test_only_custodians_may_keep_the_register(
    client: httpx.AsyncClient,
    world: World,
    sessionmaker: async_sessionmaker[AsyncSession],
    who: str,
) -> None:
    entry_id = world.entries["neglect"].id
    attempts = [
        *_routes(entry_id),
        ("GET", ENTRIES, None),
        ("POST", ENTRIES, {"categories": ["neglect"], "plan_start": "2026-01-01"}),
        ("POST", f"{ENTRIES}/search", {"nhs_number": NHS["neglect"]}),
        ("POST", "/v1/register/exports", None),
    ]
    for method, url, body in attempts:
        response = await client.request(method, url, json=body, headers=world[who].headers)
        assert response.status_code == 403, (method, url, response.text)
        assert NHS["neglect"] not in response.text
    imported = await client.post(
        "/v1/register/imports",
        content=b"categories,plan_start\nneglect,2026-01-01\n",
        headers={**world[who].headers, "Content-Type": "text/csv"},
    )
    assert imported.status_code == 403
    async with sessionmaker() as session:
        event = await session.scalar(
            select(AuditEvent).where(AuditEvent.request_id == imported.headers["x-request-id"])
        )
    assert event is not None
    assert event.event_type == "register.refused"


async def test_a_custodian_token_without_the_register_scope_is_refused(
    app: FastAPI, client: httpx.AsyncClient, world: World
) -> None:
    token = await client.post(
        "/oauth/token", data={**world["custodian_a"].credentials, "scope": "audit:read"}
    )
    assert token.status_code == 200, token.text
    headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
    response = await client.get(ENTRIES, headers=headers)
    assert response.status_code == 403
    assert "register:manage" in response.json()["detail"]


async def test_no_token_is_401(client: httpx.AsyncClient) -> None:
    assert (await client.get(ENTRIES)).status_code == 401
    assert (await client.post("/v1/register/imports", content=b"x")).status_code == 401
