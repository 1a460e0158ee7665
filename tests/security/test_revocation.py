"""A token ends when its holder is done with it or stopped, not when it expires.

Review found: signing out deleted only the cookie (the token still worked on /web and
as a bearer token for up to 15 minutes), and a disabled user's old tokens worked again
once the user was enabled again.
"""

import re
import secrets
import uuid

import httpx
from fastapi import FastAPI
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.admin.service import create_user
from app.audit.models import AuditEvent
from app.identity.models import UserRole
from tests.conftest import NHS, World


def _csrf(page: httpx.Response) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert found is not None
    return found.group(1)


def _enquiry() -> dict[str, object]:
    return {
        "subject": {"nhs_number": NHS["never"]},
        "purpose": "out_of_hours_referral",
        "reason": "revocation test",
    }


async def test_signing_out_revokes_the_token_on_the_web_and_as_a_bearer(
    app: FastAPI,
    client: httpx.AsyncClient,
    world: World,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    transport = httpx.ASGITransport(app=app, client=("203.0.113.21", 50001))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as browser:
        page = await browser.get("/web/sign-in")
        credentials = world["duty_officer"].credentials
        signed_in = await browser.post(
            "/web/sign-in",
            data={
                "csrf_token": _csrf(page),
                "username": credentials["username"],
                "password": credentials["password"],
            },
        )
        assert signed_in.status_code == 303
        token = browser.cookies.get("cpr_session")
        assert token
        bearer = {"Authorization": f"Bearer {token}"}
        assert (
            await client.post("/v1/lookups", json=_enquiry(), headers=bearer)
        ).status_code == 200

        form = await browser.get("/web/lookup")
        out = await browser.post("/web/sign-out", data={"csrf_token": _csrf(form)})
        assert out.status_code == 303

        # The same token, kept by whoever had it: refused everywhere.
        refused = await client.post("/v1/lookups", json=_enquiry(), headers=bearer)
        assert refused.status_code == 401
    async with httpx.AsyncClient(
        transport=transport, base_url="http://testserver", cookies={"cpr_session": token}
    ) as kept:
        again = await kept.get("/web/lookup")
    assert again.status_code == 303
    assert again.headers["location"] == "/web/sign-in"
    async with sessionmaker() as session:
        event = await session.scalar(
            select(AuditEvent).where(AuditEvent.request_id == out.headers["x-request-id"])
        )
    assert event is not None
    assert (event.event_type, event.outcome) == ("auth.signed_out", "revoked")


async def test_a_user_enabled_again_does_not_get_the_old_tokens_back(
    client: httpx.AsyncClient, world: World, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    username, password = f"edt-{uuid.uuid4().hex[:8]}", secrets.token_urlsafe(12)
    async with sessionmaker() as session:
        user = create_user(
            session,
            actor="test",
            organisation=world.orgs["edt"],
            username=username,
            full_name="Test Duty Officer",
            role=UserRole.duty_officer,
            password=password,
        )
        await session.commit()
    issued = await client.post(
        "/oauth/token", data={"grant_type": "password", "username": username, "password": password}
    )
    old = {"Authorization": f"Bearer {issued.json()['access_token']}"}
    assert (await client.post("/v1/lookups", json=_enquiry(), headers=old)).status_code == 200

    operator = world["operator"].headers
    disabled = await client.post(f"/v1/admin/users/{user.id}/disable", headers=operator)
    assert disabled.status_code == 200, disabled.text
    assert (await client.post("/v1/lookups", json=_enquiry(), headers=old)).status_code == 401
    enabled = await client.post(f"/v1/admin/users/{user.id}/enable", headers=operator)
    assert enabled.status_code == 200, enabled.text

    assert (await client.post("/v1/lookups", json=_enquiry(), headers=old)).status_code == 401
    fresh = await client.post(
        "/oauth/token", data={"grant_type": "password", "username": username, "password": password}
    )
    new = {"Authorization": f"Bearer {fresh.json()['access_token']}"}
    assert (await client.post("/v1/lookups", json=_enquiry(), headers=new)).status_code == 200


async def test_an_organisation_reactivated_does_not_get_its_old_tokens_back(
    client: httpx.AsyncClient, world: World
) -> None:
    police = world["police_client"]
    issued = await client.post("/oauth/token", data=police.credentials)
    old = {"Authorization": f"Bearer {issued.json()['access_token']}"}
    body = _enquiry() | {
        "purpose": "police_investigation",
        "enquirer": {"id": "dc-revoke", "name": "DC Test", "role": "detective"},
    }
    assert (await client.post("/v1/lookups", json=body, headers=old)).status_code == 200
    operator = world["operator"].headers
    path = f"/v1/admin/organisations/{police.organisation.id}"
    try:
        off = await client.patch(path, json={"active": False}, headers=operator)
        assert off.status_code == 200, off.text
    finally:
        on = await client.patch(path, json={"active": True}, headers=operator)
        assert on.status_code == 200, on.text
    assert (await client.post("/v1/lookups", json=body, headers=old)).status_code == 401
    # The world's own police token is revoked too: the other tests get a fresh one.
    police.token = (await client.post("/oauth/token", data=police.credentials)).json()[
        "access_token"
    ]
    assert (await client.post("/v1/lookups", json=body, headers=police.headers)).status_code == 200
