"""/v1/admin: the service operator registers organisations, clients and users.

Revocation (a client revoked, a user disabled, an organisation deactivated)
takes effect on the next request of a token that is still valid.
"""

import re
import secrets
import uuid
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.audit.models import AuditEvent
from tests.conftest import NHS, World

ENQUIRER = {"id": "C123456", "name": "Dr A Jones", "role": "ED registrar"}
PURPOSE_BY_KIND = {
    "emergency_department": "unscheduled_care",
    "out_of_hours_social_care": "out_of_hours_referral",
    "police": "police_investigation",
}


def _unique(prefix: str) -> str:
    return f"{prefix} {uuid.uuid4().hex[:8]}"


def strong_password() -> str:
    return f"Tq-{secrets.token_urlsafe(15)}"


async def create_org(
    http: httpx.AsyncClient, world: World, kind: str = "emergency_department", **extra: Any
) -> dict[str, Any]:
    body = {
        "kind": kind,
        "name": _unique(f"Admin test {kind}"),
        "contact_name": "Safeguarding desk",
        "contact_phone": "020 7946 0555",
        **extra,
    }
    response = await http.post(
        "/v1/admin/organisations", json=body, headers=world["operator"].headers
    )
    assert response.status_code == 201, response.text
    return response.json()


async def create_client(
    http: httpx.AsyncClient, world: World, organisation_id: str, scopes: list[str] | None = None
) -> dict[str, Any]:
    body = {
        "organisation_id": organisation_id,
        "name": _unique("EPR"),
        "scopes": scopes or ["register:lookup"],
    }
    response = await http.post("/v1/admin/clients", json=body, headers=world["operator"].headers)
    assert response.status_code == 201, response.text
    return response.json()


async def create_user(
    http: httpx.AsyncClient, world: World, organisation_id: str, password: str, **extra: Any
) -> httpx.Response:
    body = {
        "organisation_id": organisation_id,
        "username": f"user-{uuid.uuid4().hex[:8]}",
        "full_name": "Test Duty Officer",
        "role": "duty_officer",
        "password": password,
        **extra,
    }
    return await http.post("/v1/admin/users", json=body, headers=world["operator"].headers)


async def client_token(http: httpx.AsyncClient, client_id: str, secret: str) -> httpx.Response:
    return await http.post(
        "/oauth/token",
        data={"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret},
    )


async def password_token(http: httpx.AsyncClient, username: str, password: str) -> str:
    response = await http.post(
        "/oauth/token", data={"grant_type": "password", "username": username, "password": password}
    )
    assert response.status_code == 200, response.text
    return response.json()["access_token"]


async def new_client_and_token(
    http: httpx.AsyncClient, world: World, kind: str = "emergency_department"
) -> tuple[dict[str, Any], dict[str, Any], str]:
    """A new reference point with a client and a token it obtained itself."""
    org = await create_org(http, world, kind)
    created = await create_client(http, world, org["id"])
    response = await client_token(http, created["client_id"], created["client_secret"])
    assert response.status_code == 200, response.text
    return org, created, response.json()["access_token"]


async def lookup(
    http: httpx.AsyncClient, token: str, kind: str = "emergency_department", *, as_client: bool
) -> httpx.Response:
    body: dict[str, Any] = {
        "subject": {"nhs_number": NHS["neglect"]},
        "purpose": PURPOSE_BY_KIND[kind],
        "reason": "attended with unexplained bruising",
    }
    if as_client:
        body["enquirer"] = ENQUIRER
    return await http.post("/v1/lookups", json=body, headers={"Authorization": f"Bearer {token}"})


async def events_for(
    sessionmaker: async_sessionmaker[AsyncSession], organisation_id: str
) -> list[AuditEvent]:
    async with sessionmaker() as session:
        rows = await session.scalars(
            select(AuditEvent)
            .where(AuditEvent.organisation_id == uuid.UUID(organisation_id))
            .order_by(AuditEvent.occurred_at)
        )
        return list(rows.all())


# --- what the operator builds works -----------------------------------------------------


async def test_operator_registers_a_hospital_whose_client_can_look_up(
    client: httpx.AsyncClient, world: World
) -> None:
    org, created, token = await new_client_and_token(client, world)
    assert created["organisation_id"] == org["id"]
    assert created["scopes"] == ["register:lookup"]
    response = await lookup(client, token, as_client=True)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "on_plan"


async def test_operator_registers_a_duty_officer_who_can_sign_in_and_look_up(
    client: httpx.AsyncClient, world: World
) -> None:
    org = await create_org(client, world, "out_of_hours_social_care")
    password = strong_password()
    response = await create_user(client, world, org["id"], password)
    assert response.status_code == 201, response.text
    assert response.json()["scopes"] == ["register:lookup"]
    token = await password_token(client, response.json()["username"], password)
    answer = await lookup(client, token, "out_of_hours_social_care", as_client=False)
    assert answer.status_code == 200, answer.text


async def test_operator_reads_and_lists_organisations(
    client: httpx.AsyncClient, world: World
) -> None:
    org = await create_org(client, world, "police", ods_code="pol-42")
    assert org["ods_code"] == "POL-42"
    headers = world["operator"].headers
    read = await client.get(f"/v1/admin/organisations/{org['id']}", headers=headers)
    assert read.status_code == 200
    assert read.json() == org
    listed = await client.get("/v1/admin/organisations", params={"kind": "police"}, headers=headers)
    assert listed.status_code == 200
    assert org in listed.json()
    assert {row["kind"] for row in listed.json()} == {"police"}


# --- revocation takes effect on the next request ----------------------------------------


async def test_revoked_client_token_fails_on_next_request(
    client: httpx.AsyncClient, world: World
) -> None:
    _, created, token = await new_client_and_token(client, world)
    assert (await lookup(client, token, as_client=True)).status_code == 200
    response = await client.post(
        f"/v1/admin/clients/{created['client_id']}/revoke", headers=world["operator"].headers
    )
    assert response.status_code == 200, response.text
    assert response.json()["active"] is False
    assert (await lookup(client, token, as_client=True)).status_code == 401
    again = await client_token(client, created["client_id"], created["client_secret"])
    assert again.status_code == 401


async def test_revoked_client_cannot_be_given_a_new_secret(
    client: httpx.AsyncClient, world: World
) -> None:
    _, created, _ = await new_client_and_token(client, world)
    headers = world["operator"].headers
    await client.post(f"/v1/admin/clients/{created['client_id']}/revoke", headers=headers)
    response = await client.post(
        f"/v1/admin/clients/{created['client_id']}/rotate-secret", headers=headers
    )
    assert response.status_code == 409
    assert response.headers["content-type"] == "application/problem+json"


async def test_disabled_user_token_fails_on_next_request_and_enabling_does_not_revive_it(
    client: httpx.AsyncClient, world: World
) -> None:
    org = await create_org(client, world, "out_of_hours_social_care")
    password = strong_password()
    user = (await create_user(client, world, org["id"], password)).json()
    token = await password_token(client, user["username"], password)
    kind = "out_of_hours_social_care"
    assert (await lookup(client, token, kind, as_client=False)).status_code == 200

    headers = world["operator"].headers
    disabled = await client.post(f"/v1/admin/users/{user['id']}/disable", headers=headers)
    assert disabled.status_code == 200, disabled.text
    assert disabled.json()["active"] is False
    assert (await lookup(client, token, kind, as_client=False)).status_code == 401

    enabled = await client.post(f"/v1/admin/users/{user['id']}/enable", headers=headers)
    assert enabled.json()["active"] is True
    # The token issued before the disable stays revoked; the user signs in afresh.
    assert (await lookup(client, token, kind, as_client=False)).status_code == 401
    token = await password_token(client, user["username"], password)
    assert (await lookup(client, token, kind, as_client=False)).status_code == 200


async def test_deactivated_organisation_revokes_its_clients_on_next_request(
    client: httpx.AsyncClient, world: World
) -> None:
    org, _, token = await new_client_and_token(client, world)
    headers = world["operator"].headers
    path = f"/v1/admin/organisations/{org['id']}"
    response = await client.patch(path, json={"active": False}, headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["active"] is False
    assert (await lookup(client, token, as_client=True)).status_code == 401

    await client.patch(path, json={"active": True}, headers=headers)
    # Reactivated, the organisation's clients sign in afresh: old tokens stay revoked.
    assert (await lookup(client, token, as_client=True)).status_code == 401


async def test_rotated_secret_replaces_the_old_one(client: httpx.AsyncClient, world: World) -> None:
    _, created, _ = await new_client_and_token(client, world)
    response = await client.post(
        f"/v1/admin/clients/{created['client_id']}/rotate-secret",
        headers=world["operator"].headers,
    )
    assert response.status_code == 200, response.text
    rotated = response.json()
    assert rotated["client_id"] == created["client_id"]
    assert rotated["client_secret"] != created["client_secret"]
    old = await client_token(client, created["client_id"], created["client_secret"])
    assert old.status_code == 401
    new = await client_token(client, created["client_id"], rotated["client_secret"])
    assert new.status_code == 200


async def test_organisation_contact_and_name_can_be_changed(
    client: httpx.AsyncClient, world: World
) -> None:
    org = await create_org(client, world, "local_authority")
    change = {"name": _unique("Renamed council"), "contact_phone": "020 7946 0777"}
    response = await client.patch(
        f"/v1/admin/organisations/{org['id']}", json=change, headers=world["operator"].headers
    )
    assert response.status_code == 200, response.text
    assert response.json() == {**org, **change}


# --- what an organisation's kind may hold ----------------------------------------------


@pytest.mark.parametrize(
    ("kind", "scope"),
    [
        ("local_authority", "register:lookup"),
        ("emergency_department", "admin"),
        ("police", "register:manage"),
    ],
)
async def test_scope_the_kind_may_not_hold_is_refused(
    client: httpx.AsyncClient, world: World, kind: str, scope: str
) -> None:
    org = await create_org(client, world, kind)
    body = {"organisation_id": org["id"], "name": "Some system", "scopes": [scope]}
    response = await client.post("/v1/admin/clients", json=body, headers=world["operator"].headers)
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert scope in response.json()["detail"]
    listed = await client.get(
        "/v1/admin/clients",
        params={"organisation_id": org["id"]},
        headers=world["operator"].headers,
    )
    assert listed.json() == []


async def test_role_the_kind_may_not_hold_is_refused(
    client: httpx.AsyncClient, world: World
) -> None:
    org = await create_org(client, world, "emergency_department")
    response = await create_user(client, world, org["id"], strong_password(), role="custodian")
    assert response.status_code == 422
    assert "custodian" in response.json()["detail"]
    assert "audit:read" in response.json()["detail"]


# --- only the operator -------------------------------------------------------------------


def _admin_routes(app: FastAPI) -> list[tuple[str, str]]:
    """Every admin operation the app serves, with made-up ids in the path."""
    routes = []
    for template, operations in app.openapi()["paths"].items():
        if template.startswith("/v1/admin"):
            path = re.sub(r"\{[^}]+\}", str(uuid.uuid4()), template)
            routes.extend((method.upper(), path) for method in sorted(operations))
    return routes


async def _refusals(sessionmaker: async_sessionmaker[AsyncSession], subject: str) -> list[str]:
    async with sessionmaker() as session:
        rows = await session.scalars(
            select(AuditEvent.refusal).where(
                AuditEvent.event_type == "admin.refused", AuditEvent.principal == subject
            )
        )
        return [row or "" for row in rows.all()]


@pytest.mark.parametrize("who", ["custodian_a", "hospital_client", "duty_officer"])
async def test_non_operators_are_refused_on_every_admin_route_and_audited(
    app: FastAPI,
    client: httpx.AsyncClient,
    world: World,
    sessionmaker: async_sessionmaker[AsyncSession],
    who: str,
) -> None:
    principal = world[who]
    before = await _refusals(sessionmaker, principal.subject)
    routes = _admin_routes(app)
    assert len(routes) == 13  # with PUT /v1/admin/clients/{id}/public-key
    for method, path in routes:
        response = await client.request(method, path, json={}, headers=principal.headers)
        assert response.status_code == 403, (method, path, response.text)
        assert response.headers["content-type"] == "application/problem+json"
    after = await _refusals(sessionmaker, principal.subject)
    assert len(after) - len(before) == len(routes)
    assert set(after) == {"not_operator"}


async def test_operator_token_without_admin_scope_is_refused_and_audited(
    client: httpx.AsyncClient, world: World, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    operator = world["operator"]
    # A token asked for with an empty scope list carries no scope at all.
    issued = await client.post("/oauth/token", data={**operator.credentials, "scope": " "})
    assert issued.status_code == 200, issued.text
    assert issued.json()["scope"] == ""
    before = await _refusals(sessionmaker, operator.subject)
    response = await client.get(
        "/v1/admin/organisations",
        headers={"Authorization": f"Bearer {issued.json()['access_token']}"},
    )
    assert response.status_code == 403
    assert "admin" in response.json()["detail"]
    after = await _refusals(sessionmaker, operator.subject)
    assert sorted(after) == sorted([*before, "missing_scope"])


async def test_admin_api_without_a_token_is_401(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/admin/organisations")
    assert response.status_code == 401


# --- secrets stay secret -----------------------------------------------------------------


async def test_client_secret_is_never_in_a_listing(client: httpx.AsyncClient, world: World) -> None:
    org, created, _ = await new_client_and_token(client, world)
    headers = world["operator"].headers
    listed = await client.get(
        "/v1/admin/clients", params={"organisation_id": org["id"]}, headers=headers
    )
    assert listed.status_code == 200
    assert [row["client_id"] for row in listed.json()] == [created["client_id"]]
    assert set(listed.json()[0]) == {
        "client_id",
        "organisation_id",
        "name",
        "scopes",
        "active",
        "created_at",
        "secret_allowed",  # whether a secret is accepted, never the secret
        "public_jwks",  # public keys only (app/auth/assertions.py refuses private ones)
    }
    everything = (await client.get("/v1/admin/clients", headers=headers)).text
    assert created["client_secret"] not in everything
    assert "argon2" not in everything
    assert "client_secret" not in everything


async def test_password_is_never_in_an_answer(client: httpx.AsyncClient, world: World) -> None:
    org = await create_org(client, world, "out_of_hours_social_care")
    password = strong_password()
    created = await create_user(client, world, org["id"], password)
    listed = await client.get(
        "/v1/admin/users", params={"organisation_id": org["id"]}, headers=world["operator"].headers
    )
    for text in (created.text, listed.text):
        assert password not in text
        assert "password" not in text
        assert "argon2" not in text
    assert [row["id"] for row in listed.json()] == [created.json()["id"]]


# --- every change is an audit event ------------------------------------------------------


async def test_each_change_is_an_audit_event_by_the_operator(
    client: httpx.AsyncClient, world: World, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    headers = world["operator"].headers
    org, created, _ = await new_client_and_token(client, world)
    client_path = f"/v1/admin/clients/{created['client_id']}"
    await client.post(f"{client_path}/rotate-secret", headers=headers)
    await client.post(f"{client_path}/revoke", headers=headers)
    org_path = f"/v1/admin/organisations/{org['id']}"
    await client.patch(org_path, json={"contact_phone": "020 7946 0888"}, headers=headers)
    await client.patch(org_path, json={"active": False}, headers=headers)
    await client.patch(org_path, json={"active": True}, headers=headers)

    recorded = await events_for(sessionmaker, org["id"])
    # The new client's own sign-in is recorded too, as its own event, not the operator's.
    sign_ins = [event for event in recorded if event.event_type == "auth.signed_in"]
    assert [event.principal for event in sign_ins] == [f"client:{created['client_id']}"]
    events = [event for event in recorded if event not in sign_ins]
    assert [event.event_type for event in events] == [
        "admin.organisation_created",
        "admin.client_created",
        "admin.client_secret_rotated",
        "admin.client_revoked",
        "admin.organisation_updated",
        "admin.organisation_deactivated",
        "admin.organisation_reactivated",
    ]
    for event in events:
        assert event.principal == world["operator"].subject
        assert event.outcome == "ok"
        assert event.request_id is not None
        assert event.source_address == "203.0.113.7"
        assert created["client_secret"] not in str(event.detail)
    assert events[4].detail["changed"] == {
        "contact_phone": {"from": "020 7946 0555", "to": "020 7946 0888"}
    }


async def test_user_changes_are_audit_events(
    client: httpx.AsyncClient, world: World, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    headers = world["operator"].headers
    org = await create_org(client, world, "out_of_hours_social_care")
    password = strong_password()
    user = (await create_user(client, world, org["id"], password)).json()
    await client.post(f"/v1/admin/users/{user['id']}/disable", headers=headers)
    await client.post(f"/v1/admin/users/{user['id']}/enable", headers=headers)

    events = await events_for(sessionmaker, org["id"])
    assert [event.event_type for event in events] == [
        "admin.organisation_created",
        "admin.user_created",
        "admin.user_disabled",
        "admin.user_enabled",
    ]
    assert {event.detail["user_id"] for event in events[1:]} == {user["id"]}
    assert all(password not in str(event.detail) for event in events)


# --- refusals ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "password",
    [
        "Short-1!",
        "password1234",
        "PASSWORD1234",
        "aaaaaaaaaaaaaaaa",
        "xx-{username}-xx",
    ],
)
async def test_weak_password_is_refused(
    client: httpx.AsyncClient, world: World, password: str
) -> None:
    org = await create_org(client, world, "out_of_hours_social_care")
    username = f"weak-{uuid.uuid4().hex[:8]}"
    response = await create_user(
        client, world, org["id"], password.format(username=username), username=username
    )
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert "password" in response.json()["detail"]


async def test_duplicate_username_is_a_conflict(client: httpx.AsyncClient, world: World) -> None:
    org = await create_org(client, world, "out_of_hours_social_care")
    username = f"dup-{uuid.uuid4().hex[:8]}"
    first = await create_user(client, world, org["id"], strong_password(), username=username)
    assert first.status_code == 201
    second = await create_user(client, world, org["id"], strong_password(), username=username)
    assert second.status_code == 409
    assert second.headers["content-type"] == "application/problem+json"


async def test_duplicate_organisation_name_or_ods_code_is_a_conflict(
    client: httpx.AsyncClient, world: World
) -> None:
    ods = f"D{uuid.uuid4().hex[:8]}".upper()
    org = await create_org(client, world, ods_code=ods)
    headers = world["operator"].headers
    body = {
        "kind": "police",
        "name": org["name"],
        "contact_name": "x",
        "contact_phone": "020 7946 0000",
    }
    same_name = await client.post("/v1/admin/organisations", json=body, headers=headers)
    assert same_name.status_code == 409
    same_ods = await client.post(
        "/v1/admin/organisations",
        json={**body, "name": _unique("Other"), "ods_code": ods},
        headers=headers,
    )
    assert same_ods.status_code == 409
    other = await create_org(client, world)
    renamed = await client.patch(
        f"/v1/admin/organisations/{other['id']}", json={"name": org["name"]}, headers=headers
    )
    assert renamed.status_code == 409


async def test_unknown_ids_are_404(client: httpx.AsyncClient, world: World) -> None:
    headers = world["operator"].headers
    missing = str(uuid.uuid4())
    requests = [
        ("GET", f"/v1/admin/organisations/{missing}", None),
        ("PATCH", f"/v1/admin/organisations/{missing}", {"active": False}),
        ("POST", "/v1/admin/clients/cpr-0000000000000000/rotate-secret", None),
        ("POST", "/v1/admin/clients/cpr-0000000000000000/revoke", None),
        ("POST", f"/v1/admin/users/{missing}/disable", None),
        ("POST", f"/v1/admin/users/{missing}/enable", None),
        (
            "POST",
            "/v1/admin/clients",
            {"organisation_id": missing, "name": "x", "scopes": ["register:lookup"]},
        ),
    ]
    for method, path, body in requests:
        response = await client.request(method, path, json=body, headers=headers)
        assert response.status_code == 404, (method, path, response.text)
        assert response.headers["content-type"] == "application/problem+json"


async def test_unknown_and_null_fields_are_refused(client: httpx.AsyncClient, world: World) -> None:
    headers = world["operator"].headers
    org = await create_org(client, world)
    path = f"/v1/admin/organisations/{org['id']}"
    for body in ({"kind": "police"}, {"name": None}, {}, {"secret_hash": "x"}):
        response = await client.patch(path, json=body, headers=headers)
        assert response.status_code == 422, body
    extra = {
        "organisation_id": org["id"],
        "name": "x",
        "scopes": ["register:lookup"],
        "secret": "mine",
    }
    assert (await client.post("/v1/admin/clients", json=extra, headers=headers)).status_code == 422


async def test_operator_may_not_lock_itself_out(client: httpx.AsyncClient, world: World) -> None:
    operator = world["operator"]
    own_org = f"/v1/admin/organisations/{operator.organisation.id}"
    response = await client.patch(own_org, json={"active": False}, headers=operator.headers)
    assert response.status_code == 409
    user_id = operator.subject.removeprefix("user:")
    response = await client.post(f"/v1/admin/users/{user_id}/disable", headers=operator.headers)
    assert response.status_code == 409
    assert (await client.get("/v1/admin/users", headers=operator.headers)).status_code == 200


async def test_no_new_credentials_in_a_deactivated_organisation(
    client: httpx.AsyncClient, world: World
) -> None:
    headers = world["operator"].headers
    org = await create_org(client, world)
    await client.patch(
        f"/v1/admin/organisations/{org['id']}", json={"active": False}, headers=headers
    )
    body = {"organisation_id": org["id"], "name": "x", "scopes": ["register:lookup"]}
    assert (await client.post("/v1/admin/clients", json=body, headers=headers)).status_code == 409
    response = await create_user(client, world, org["id"], strong_password())
    assert response.status_code == 409


async def test_refused_changes_leave_no_trace(
    client: httpx.AsyncClient, world: World, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    org = await create_org(client, world, "local_authority")
    await create_user(client, world, org["id"], "too-short")
    await create_client(client, world, org["id"], ["audit:read"])
    body = {"organisation_id": org["id"], "name": "x", "scopes": ["register:lookup"]}
    await client.post("/v1/admin/clients", json=body, headers=world["operator"].headers)
    async with sessionmaker() as session:
        count = await session.scalar(
            select(func.count())
            .select_from(AuditEvent)
            .where(AuditEvent.organisation_id == uuid.UUID(org["id"]))
        )
    assert count == 2  # created the organisation, created the audit:read client


async def test_listings_filter_by_organisation_and_state(
    client: httpx.AsyncClient, world: World
) -> None:
    headers = world["operator"].headers
    org, kept, _ = await new_client_and_token(client, world)
    revoked = await create_client(client, world, org["id"])
    await client.post(f"/v1/admin/clients/{revoked['client_id']}/revoke", headers=headers)
    for active, expected in ((True, kept), (False, revoked)):
        listed = await client.get(
            "/v1/admin/clients",
            params={"organisation_id": org["id"], "active": active},
            headers=headers,
        )
        assert [row["client_id"] for row in listed.json()] == [expected["client_id"]]
    inactive = await client.get(
        "/v1/admin/organisations", params={"active": False}, headers=headers
    )
    assert org["id"] not in {row["id"] for row in inactive.json()}


async def test_overlong_client_id_is_simply_not_found(
    client: httpx.AsyncClient, world: World
) -> None:
    response = await client.post(
        f"/v1/admin/clients/cpr-{'x' * 300}/revoke", headers=world["operator"].headers
    )
    assert response.status_code == 404
