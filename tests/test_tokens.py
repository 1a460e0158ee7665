"""The token endpoint (RFC 6749) and the published key set (README, "Security model", check 1)."""

import base64
import json
import uuid
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from jose import jwt
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.audit.models import AuditEvent
from app.auth.models import AccessToken
from app.config import Settings
from tests.conftest import World
from tests.faults import audit_log_unwritable

MAX_TTL = 900
REGISTERED_CLAIMS = {"iss", "aud", "sub", "exp", "iat", "nbf", "jti", "org", "scope"}


def basic(client_id: str, secret: str) -> dict[str, str]:
    """RFC 6749 §2.3.1: each part form-urlencoded, then HTTP Basic."""
    pair = f"{quote(client_id, safe='')}:{quote(secret, safe='')}".encode()
    return {"Authorization": f"Basic {base64.b64encode(pair).decode()}"}


def b64url_json(part: str) -> dict[str, Any]:
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


async def issue(client: httpx.AsyncClient, world: World, who: str) -> str:
    response = await client.post("/oauth/token", data=world[who].credentials)
    assert response.status_code == 200, response.text
    return response.json()["access_token"]


async def published_keys(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    response = await client.get("/.well-known/jwks.json")
    assert response.status_code == 200
    return response.json()["keys"]


async def login_event(
    sessionmaker: async_sessionmaker[AsyncSession], response: httpx.Response
) -> AuditEvent:
    """The one audit event written for this very request."""
    async with sessionmaker() as session:
        events = (
            await session.scalars(
                select(AuditEvent).where(AuditEvent.request_id == response.headers["x-request-id"])
            )
        ).all()
    assert len(events) == 1
    return events[0]


def assert_no_secret(event: AuditEvent, credentials: dict[str, str]) -> None:
    recorded = json.dumps([event.detail, event.principal, event.refusal])
    for secret in (credentials.get("client_secret"), credentials.get("password")):
        if secret:
            assert secret not in recorded


def assert_token_response(response: httpx.Response) -> None:
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["access_token"]
    assert body["token_type"] == "Bearer"
    assert 0 < body["expires_in"] <= MAX_TTL
    assert body["scope"] == "register:lookup"


# --- Issuing tokens ---------------------------------------------------------------------------


async def test_client_credentials_with_http_basic(client: httpx.AsyncClient, world: World) -> None:
    credentials = world["hospital_client"].credentials
    response = await client.post(
        "/oauth/token",
        data={"grant_type": "client_credentials"},
        headers=basic(credentials["client_id"], credentials["client_secret"]),
    )
    assert_token_response(response)


async def test_client_credentials_with_form_fields(client: httpx.AsyncClient, world: World) -> None:
    response = await client.post("/oauth/token", data=world["hospital_client"].credentials)
    assert_token_response(response)


async def test_password_grant_for_a_duty_officer(client: httpx.AsyncClient, world: World) -> None:
    response = await client.post("/oauth/token", data=world["duty_officer"].credentials)
    assert_token_response(response)


async def test_an_issued_token_is_accepted_for_a_lookup(
    client: httpx.AsyncClient, world: World
) -> None:
    token = await issue(client, world, "police_client")
    body = {
        "subject": {"nhs_number": "9991000089"},
        "purpose": "police_investigation",
        "reason": "section 47 enquiry",
        "enquirer": {"id": f"P{uuid.uuid4().hex[:10]}", "name": "DC Smith", "role": "CAIT"},
    }
    response = await client.post(
        "/v1/lookups", json=body, headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 200, response.text


# --- Sign-ins are on record -------------------------------------------------------------------


@pytest.mark.parametrize("who", ["hospital_client", "duty_officer"])
async def test_a_sign_in_is_an_audit_event_naming_the_tokens_jti(
    client: httpx.AsyncClient,
    world: World,
    sessionmaker: async_sessionmaker[AsyncSession],
    who: str,
) -> None:
    principal = world[who]
    response = await client.post("/oauth/token", data=principal.credentials)
    assert_token_response(response)
    claims = jwt.get_unverified_claims(response.json()["access_token"])
    event = await login_event(sessionmaker, response)
    assert (event.event_type, event.outcome, event.refusal) == ("auth.signed_in", "issued", None)
    assert event.principal == principal.subject
    assert event.organisation_id == principal.organisation.id
    assert event.source_address == "203.0.113.7"
    assert event.detail is not None
    assert event.detail["grant_type"] == principal.credentials["grant_type"]
    assert event.detail["jti"] == claims["jti"]
    assert event.detail["scopes"] == ["register:lookup"]
    assert_no_secret(event, principal.credentials)
    assert response.json()["access_token"] not in json.dumps(event.detail)


@pytest.mark.parametrize("who", ["hospital_client", "duty_officer"])
async def test_each_token_issued_is_exactly_one_sign_in_event(
    client: httpx.AsyncClient,
    world: World,
    sessionmaker: async_sessionmaker[AsyncSession],
    who: str,
) -> None:
    principal = world[who]
    responses = [await client.post("/oauth/token", data=principal.credentials) for _ in range(3)]
    jtis = [jwt.get_unverified_claims(r.json()["access_token"])["jti"] for r in responses]
    request_ids = [r.headers["x-request-id"] for r in responses]
    async with sessionmaker() as session:
        events = (
            await session.scalars(select(AuditEvent).where(AuditEvent.request_id.in_(request_ids)))
        ).all()
        signed_in = (
            await session.scalars(
                select(AuditEvent).where(
                    AuditEvent.principal == principal.subject,
                    AuditEvent.event_type == "auth.signed_in",
                )
            )
        ).all()
        stored = set(
            await session.scalars(select(AccessToken.jti).where(AccessToken.jti.in_(jtis)))
        )
    # One event per request, and each token's jti in exactly one event (whoever else
    # signed this principal in before).
    assert sorted(e.request_id for e in events) == sorted(request_ids)
    recorded = [e.detail["jti"] for e in signed_in if e.detail and e.detail.get("jti") in jtis]
    assert sorted(recorded) == sorted(jtis)
    assert stored == set(jtis)


@pytest.mark.parametrize("who", ["hospital_client", "duty_officer"])
async def test_no_token_is_issued_while_the_audit_log_cannot_be_written(
    client: httpx.AsyncClient,
    world: World,
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    admin_sessionmaker: async_sessionmaker[AsyncSession],
    who: str,
) -> None:
    principal = world[who]

    async def tokens_stored() -> int:
        async with sessionmaker() as session:
            statement = select(func.count()).where(AccessToken.subject == principal.subject)
            return (await session.execute(statement)).scalar_one()

    before = await tokens_stored()
    async with audit_log_unwritable(admin_sessionmaker, settings):
        response = await client.post("/oauth/token", data=principal.credentials)

    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert int(response.headers["retry-after"]) > 0
    assert response.headers["cache-control"] == "no-store"
    assert "access_token" not in response.text
    assert set(response.json()) <= {"type", "title", "status", "code", "detail", "instance"}
    assert response.json()["code"] == "service_unavailable"
    assert await tokens_stored() == before
    async with sessionmaker() as session:
        written = await session.scalar(
            select(func.count()).where(AuditEvent.request_id == response.headers["x-request-id"])
        )
    assert written == 0
    # Once the log is writable again, so is signing in.
    assert_token_response(await client.post("/oauth/token", data=principal.credentials))


async def test_a_scope_refusal_is_not_answered_unless_it_is_recorded(
    client: httpx.AsyncClient,
    world: World,
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    admin_sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    data = {**world["hospital_client"].credentials, "scope": "admin"}
    async with audit_log_unwritable(admin_sessionmaker, settings):
        response = await client.post("/oauth/token", data=data)
    assert response.status_code == 503
    assert "access_token" not in response.text


# --- What a token is ---------------------------------------------------------------------------


async def test_token_is_es256_signed_by_a_published_key(
    client: httpx.AsyncClient, world: World
) -> None:
    token = await issue(client, world, "hospital_client")
    header = b64url_json(token.split(".")[0])
    assert header == jwt.get_unverified_header(token)
    assert header["alg"] == "ES256"
    assert header["kid"] in {key["kid"] for key in await published_keys(client)}


@pytest.mark.parametrize("who", ["hospital_client", "duty_officer"])
async def test_token_carries_the_registered_claims_and_lives_at_most_15_minutes(
    client: httpx.AsyncClient, world: World, settings: Settings, who: str
) -> None:
    token = await issue(client, world, who)
    claims = jwt.get_unverified_claims(token)
    assert b64url_json(token.split(".")[1]) == claims
    assert set(claims) >= REGISTERED_CLAIMS
    assert (claims["iss"], claims["aud"]) == (settings.token_issuer, settings.token_audience)
    assert claims["sub"] == world[who].subject
    assert claims["org"] == str(world[who].organisation.id)
    assert claims["scope"] == "register:lookup"
    assert claims["nbf"] <= claims["iat"] + 1
    assert 0 < claims["exp"] - claims["iat"] <= MAX_TTL
    assert claims["jti"]


async def test_each_token_has_its_own_jti(client: httpx.AsyncClient, world: World) -> None:
    first = jwt.get_unverified_claims(await issue(client, world, "hospital_client"))
    second = jwt.get_unverified_claims(await issue(client, world, "hospital_client"))
    assert first["jti"] != second["jti"]


async def test_token_signature_verifies_with_the_published_key(
    client: httpx.AsyncClient, world: World, settings: Settings
) -> None:
    token = await issue(client, world, "hospital_client")
    kid = jwt.get_unverified_header(token)["kid"]
    (key,) = [key for key in await published_keys(client) if key["kid"] == kid]
    claims = jwt.decode(
        token,
        key,
        algorithms=["ES256"],
        audience=settings.token_audience,
        issuer=settings.token_issuer,
    )
    assert claims["sub"] == world["hospital_client"].subject


async def test_jwks_publishes_only_public_ec_keys(client: httpx.AsyncClient) -> None:
    keys = await published_keys(client)
    assert keys
    for key in keys:
        assert key["kty"] == "EC"
        assert key["crv"] == "P-256"
        assert key["kid"]
        assert {"d", "p", "q", "dp", "dq", "qi", "k"}.isdisjoint(key)


# --- Refusals ------------------------------------------------------------------------------------


async def test_wrong_client_secret_is_invalid_client_and_audited(
    client: httpx.AsyncClient, world: World, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    hospital = world["hospital_client"]
    response = await client.post(
        "/oauth/token",
        data={"grant_type": "client_credentials"},
        headers=basic(hospital.credentials["client_id"], "not-the-secret"),
    )
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"
    assert "access_token" not in response.text
    assert response.headers["www-authenticate"].lower().startswith("basic")
    event = await login_event(sessionmaker, response)
    assert (event.event_type, event.outcome) == ("auth.login_failed", "refused")
    assert event.refusal == "invalid_client"
    assert event.principal == hospital.subject
    assert "not-the-secret" not in json.dumps(event.detail)


async def test_unknown_client_is_invalid_client_and_audited(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    client_id = f"no-such-client-{uuid.uuid4().hex[:8]}"
    response = await client.post(
        "/oauth/token",
        data={
            "grant_type": "client_credentials",
            "client_id": client_id,
            "client_secret": "whatever-it-is",
        },
    )
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"
    event = await login_event(sessionmaker, response)
    assert (event.event_type, event.refusal) == ("auth.login_failed", "invalid_client")
    assert client_id in (event.principal or "")


async def test_wrong_password_is_invalid_grant_and_audited(
    client: httpx.AsyncClient, world: World, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    officer = world["duty_officer"]
    wrong = f"Wr0ng-{uuid.uuid4().hex}"
    response = await client.post("/oauth/token", data={**officer.credentials, "password": wrong})
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"
    assert "access_token" not in response.text
    event = await login_event(sessionmaker, response)
    assert (event.event_type, event.outcome) == ("auth.login_failed", "refused")
    assert event.refusal == "invalid_grant"
    assert event.principal == officer.subject
    assert wrong not in json.dumps(event.detail)


@pytest.mark.parametrize("grant_type", ["authorization_code", "implicit", "refresh_token"])
async def test_unsupported_grant_type(
    client: httpx.AsyncClient, world: World, grant_type: str
) -> None:
    data = {**world["hospital_client"].credentials, "grant_type": grant_type}
    response = await client.post("/oauth/token", data=data)
    assert response.status_code == 400
    assert response.json()["error"] == "unsupported_grant_type"
    assert "access_token" not in response.text


@pytest.mark.parametrize("scope", ["admin", "register:lookup admin", "audit:read"])
@pytest.mark.parametrize("who", ["hospital_client", "duty_officer"])
async def test_a_scope_not_granted_is_invalid_scope_and_audited(
    client: httpx.AsyncClient,
    world: World,
    sessionmaker: async_sessionmaker[AsyncSession],
    who: str,
    scope: str,
) -> None:
    """The credentials were right, so the caller is identified: the refusal names it."""
    principal = world[who]
    response = await client.post("/oauth/token", data={**principal.credentials, "scope": scope})
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_scope"
    assert "access_token" not in response.text
    event = await login_event(sessionmaker, response)
    assert (event.event_type, event.outcome) == ("auth.login_refused", "refused")
    assert event.refusal == "invalid_scope"
    assert event.principal == principal.subject
    assert event.organisation_id == principal.organisation.id
    assert event.detail is not None
    assert event.detail["scopes_requested"] == sorted(scope.split())
    assert_no_secret(event, principal.credentials)


async def test_token_errors_are_not_cached(client: httpx.AsyncClient) -> None:
    response = await client.post("/oauth/token", data={"grant_type": "implicit"})
    assert response.status_code == 400
    assert response.headers["cache-control"] == "no-store"


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        pytest.param(b"", {"Content-Type": "application/x-www-form-urlencoded"}, id="empty"),
        pytest.param(b"scope=register%3Alookup", None, id="no-grant-type"),
        pytest.param(b"grant_type=", None, id="blank-grant-type"),
        pytest.param(
            b'{"grant_type": "client_credentials"}',
            {"Content-Type": "application/json"},
            id="json",
        ),
        pytest.param(b"grant_type=password", {"Content-Type": "text/plain"}, id="text"),
        pytest.param(
            b"grant_type=password&grant_type=client_credentials", None, id="grant-type-twice"
        ),
        pytest.param(b"grant_type=password&username=a%00b&password=x", None, id="nul"),
        pytest.param(b"grant_type=password&username=%ff&password=x", None, id="not-utf-8"),
        pytest.param(b"grant_type=password&username=duty", None, id="no-password"),
    ],
)
async def test_a_malformed_token_request_is_an_rfc_6749_invalid_request(
    client: httpx.AsyncClient, body: bytes, headers: dict[str, str] | None
) -> None:
    """RFC 6749 §5.2, not a problem document (FastAPI's 422) for a missing grant_type."""
    response = await client.post(
        "/oauth/token",
        content=body,
        headers=headers or {"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-store"
    assert set(response.json()) == {"error", "error_description"}
    assert response.json()["error"] == "invalid_request"


async def test_client_authentication_failure_is_a_401_with_a_basic_challenge(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post(
        "/oauth/token",
        data={"grant_type": "client_credentials"},
        headers={"Authorization": "Basic !!not-base64!!"},
    )
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"
    assert response.headers["www-authenticate"].startswith("Basic ")
