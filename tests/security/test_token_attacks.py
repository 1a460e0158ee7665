"""Attacks on the bearer token and on the principal behind it (README, "Security model": "Legitimacy
of the enquirer", checks 1-3). One test per attack; read it as a checklist.

Every attack POSTs a *valid* lookup of a child who is on a plan, so only the
token stands between the attacker and the answer. Each must get 401 (or 403
for a legitimate caller who may not look up) as problem+json, with a
``WWW-Authenticate`` challenge on 401, an audit event for that very request
(found by its ``x-request-id``), and nothing from the register in the body.

Forged tokens carry a ``jti`` recorded as issued (``record_as_issued``), so the
refusal comes from what is wrong with the token, not from the jti check; the
control test shows such a token is accepted when nothing is wrong with it.
"""

import asyncio
import base64
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from jose import jwk, jwt
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.admin.service import create_client, create_organisation
from app.audit.models import AuditEvent
from app.auth.models import AccessToken
from app.config import Settings
from app.identity.models import Client, Organisation, OrganisationKind, Scope
from tests.conftest import NHS, World
from tests.security.tokens import (
    KeyFile,
    b64url,
    b64url_json,
    claims,
    current_key,
    fresh_ec_pem,
    fresh_rsa_pem,
    hs256_token,
    mint,
    raw_token,
    record_as_issued,
    replace_payload,
    unverified_claims,
)

SOURCE_ADDRESS = "203.0.113.7"  # the `client` fixture's peer address
REGISTER_DATA = ("categories", "on_plan", "neglect", "unborn", "lookup_id", NHS["neglect"])

Forge = Callable[..., Awaitable[str]]


def lookup_body() -> dict[str, Any]:
    """A valid enquiry about a child on a plan (a fresh enquirer: no volume limit)."""
    return {
        "subject": {"nhs_number": NHS["neglect"]},
        "purpose": "unscheduled_care",
        "reason": "attended ED with unexplained bruising",
        "enquirer": {"id": f"E-{uuid.uuid4().hex[:10]}", "name": "Dr A Jones", "role": "registrar"},
    }


async def lookup(
    http: httpx.AsyncClient, token: str | None = None, **kwargs: Any
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    headers.update(kwargs.pop("headers", {}))
    return await http.post("/v1/lookups", json=lookup_body(), headers=headers, **kwargs)


async def audit_event(
    sessionmaker: async_sessionmaker[AsyncSession], response: httpx.Response
) -> AuditEvent | None:
    async with sessionmaker() as session:
        events = (
            await session.scalars(
                select(AuditEvent).where(AuditEvent.request_id == response.headers["x-request-id"])
            )
        ).all()
    assert len(events) <= 1, [(e.event_type, e.refusal) for e in events]
    return events[0] if events else None


def assert_no_register_data(response: httpx.Response) -> None:
    for marker in REGISTER_DATA:
        assert marker not in response.text, f"{marker!r} leaked in {response.text}"


async def assert_refused(
    sessionmaker: async_sessionmaker[AsyncSession],
    response: httpx.Response,
    *,
    status: int = 401,
    refusal: str = "invalid_token",
    event_type: str = "auth.refused",
) -> AuditEvent:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["status"] == status
    if status == 401:
        challenge = response.headers.get("www-authenticate", "")
        assert challenge.startswith("Bearer"), challenge
        if refusal in ("invalid_token", "principal_inactive"):
            assert 'error="invalid_token"' in challenge
    assert_no_register_data(response)
    event = await audit_event(sessionmaker, response)
    assert event is not None, "the refusal was not audited"
    assert (event.event_type, event.outcome, event.refusal) == (event_type, "refused", refusal)
    assert event.source_address == SOURCE_ADDRESS
    return event


@pytest.fixture
async def real_key(settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]) -> KeyFile:
    return await current_key(settings, sessionmaker)


@pytest.fixture
def forge(
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    world: World,
    real_key: KeyFile,
) -> Forge:
    """``await forge(**changes)``: a hospital-client token signed with the real current
    key, its jti recorded as issued, with the given ``mint`` changes."""

    async def _forge(**changes: Any) -> str:
        changes.setdefault("principal", world["hospital_client"])
        token = mint(settings, key=real_key, **changes)
        await record_as_issued(sessionmaker, unverified_claims(token))
        return token

    return _forge


@pytest.fixture
def good_claims(settings: Settings, world: World) -> dict[str, Any]:
    return claims(settings, principal=world["hospital_client"])


# --- the control ---------------------------------------------------------------------


async def test_control_a_token_minted_like_the_service_is_accepted(
    client: httpx.AsyncClient, forge: Forge
) -> None:
    """Without this, every refusal below could be the helper's fault."""
    response = await lookup(client, await forge())
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "on_plan"


# --- signature and algorithm -----------------------------------------------------------


async def test_forged_signature_another_ec_key_same_kid(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession], forge: Forge
) -> None:
    token = await forge(key_pem=fresh_ec_pem())
    await assert_refused(sessionmaker, await lookup(client, token))


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
async def test_alg_none_without_signature(
    client: httpx.AsyncClient,
    sessionmaker: async_sessionmaker[AsyncSession],
    real_key: KeyFile,
    good_claims: dict[str, Any],
    alg: str,
) -> None:
    await record_as_issued(sessionmaker, good_claims)
    token = raw_token({"alg": alg, "typ": "JWT", "kid": real_key.kid}, good_claims)
    assert token.endswith(".")
    await assert_refused(sessionmaker, await lookup(client, token))


async def test_alg_none_with_a_real_signature_attached(
    client: httpx.AsyncClient,
    sessionmaker: async_sessionmaker[AsyncSession],
    real_key: KeyFile,
    good_claims: dict[str, Any],
    forge: Forge,
) -> None:
    signature = base64.urlsafe_b64decode((await forge()).split(".")[2] + "==")
    await record_as_issued(sessionmaker, good_claims)
    token = raw_token({"alg": "none", "kid": real_key.kid}, good_claims, signature)
    await assert_refused(sessionmaker, await lookup(client, token))


async def test_hs256_keyed_with_the_public_key_pem(
    client: httpx.AsyncClient,
    sessionmaker: async_sessionmaker[AsyncSession],
    real_key: KeyFile,
    good_claims: dict[str, Any],
) -> None:
    """Algorithm confusion, the shape of CVE-2024-33663 in python-jose: the public key,
    which anyone can fetch, used as the HMAC secret."""
    await record_as_issued(sessionmaker, good_claims)
    for secret in (real_key.public_pem, real_key.public_pem.strip()):
        token = hs256_token({"kid": real_key.kid, "typ": "JWT"}, good_claims, secret.encode())
        await assert_refused(sessionmaker, await lookup(client, token))


async def test_hs256_keyed_with_the_published_jwk_json(
    app: FastAPI,
    client: httpx.AsyncClient,
    sessionmaker: async_sessionmaker[AsyncSession],
    real_key: KeyFile,
    good_claims: dict[str, Any],
) -> None:
    # The key may be newer than this process's key set (another test rotated it): a
    # request naming its kid makes the keyring look again (at most once a second).
    for _ in range(3):
        if await app.state.keyring.verifier(real_key.kid) is not None:
            break
        await asyncio.sleep(1.1)
    keys = (await client.get("/.well-known/jwks.json")).json()["keys"]
    published = next(key for key in keys if key["kid"] == real_key.kid)
    await record_as_issued(sessionmaker, good_claims)
    for secret in (
        json.dumps(published),
        json.dumps(published, separators=(",", ":"), sort_keys=True),
    ):
        token = hs256_token({"kid": real_key.kid}, good_claims, secret.encode())
        await assert_refused(sessionmaker, await lookup(client, token))


async def test_rs256_claimed(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession], forge: Forge
) -> None:
    token = await forge(key_pem=fresh_rsa_pem(), alg="RS256")
    assert jwt.get_unverified_header(token)["alg"] == "RS256"
    await assert_refused(sessionmaker, await lookup(client, token))


async def test_attacker_key_embedded_in_the_header(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession], forge: Forge
) -> None:
    """``jwk`` / ``jku`` / ``x5u`` headers must never supply the verification key."""
    attacker_pem = fresh_ec_pem()
    attacker_jwk = jwk.construct(attacker_pem, "ES256").public_key().to_dict()
    token = await forge(
        key_pem=attacker_pem,
        headers={
            "jwk": attacker_jwk,
            "jku": "https://attacker.example/jwks.json",
            "x5u": "https://attacker.example/cert.pem",
        },
    )
    await assert_refused(sessionmaker, await lookup(client, token))


async def test_all_zero_ecdsa_signature(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession], forge: Forge
) -> None:
    """r = s = 0 (the "psychic signature", CVE-2022-21449 in Java)."""
    header, payload, _ = (await forge()).split(".")
    token = f"{header}.{payload}.{b64url(bytes(64))}"
    await assert_refused(sessionmaker, await lookup(client, token))


async def test_valid_signature_with_a_tampered_payload(
    client: httpx.AsyncClient,
    sessionmaker: async_sessionmaker[AsyncSession],
    world: World,
    forge: Forge,
) -> None:
    genuine = await forge()
    body = unverified_claims(genuine)
    for changes in (
        {"exp": body["exp"] + 60},
        {"scope": "register:lookup admin"},
        {"sub": world["police_client"].subject, "org": str(world.orgs["police"].id)},
    ):
        tampered = replace_payload(genuine, {**body, **changes})
        await record_as_issued(sessionmaker, {**body, **changes})
        await assert_refused(sessionmaker, await lookup(client, tampered))


# --- claims ------------------------------------------------------------------------------


@pytest.mark.parametrize("claim", ["exp", "aud", "iss", "nbf", "jti", "sub", "iat", "org", "scope"])
async def test_token_missing_a_required_claim(
    client: httpx.AsyncClient,
    sessionmaker: async_sessionmaker[AsyncSession],
    forge: Forge,
    claim: str,
) -> None:
    token = await forge(drop=[claim])
    assert claim not in unverified_claims(token)
    await assert_refused(sessionmaker, await lookup(client, token))


async def test_expired(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession], forge: Forge
) -> None:
    now = int(time.time())
    token = await forge(iat=now - 700, nbf=now - 700, exp=now - 100)
    await assert_refused(sessionmaker, await lookup(client, token))


async def test_not_before_in_the_future_beyond_leeway(
    client: httpx.AsyncClient,
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    forge: Forge,
) -> None:
    now = int(time.time())
    token = await forge(iat=now, nbf=now + settings.token_leeway_seconds + 60, exp=now + 600)
    await assert_refused(sessionmaker, await lookup(client, token))


async def test_issued_in_the_future(
    client: httpx.AsyncClient,
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    forge: Forge,
) -> None:
    now = int(time.time())
    token = await forge(iat=now + settings.token_leeway_seconds + 120, nbf=now, exp=now + 600)
    await assert_refused(sessionmaker, await lookup(client, token))


@pytest.mark.parametrize(
    "issuer", ["https://attacker.example", "https://cp-register.local/", "", None]
)
async def test_wrong_issuer(
    client: httpx.AsyncClient,
    sessionmaker: async_sessionmaker[AsyncSession],
    forge: Forge,
    issuer: str | None,
) -> None:
    await assert_refused(sessionmaker, await lookup(client, await forge(iss=issuer)))


@pytest.mark.parametrize(
    "audience", ["another-service", "cp-register-admin", ["another-service"], [], None]
)
async def test_wrong_audience(
    client: httpx.AsyncClient,
    sessionmaker: async_sessionmaker[AsyncSession],
    forge: Forge,
    audience: Any,
) -> None:
    await assert_refused(sessionmaker, await lookup(client, await forge(aud=audience)))


async def test_unknown_kid(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession], forge: Forge
) -> None:
    token = await forge(kid=f"20990101-{uuid.uuid4().hex[:8]}")
    await assert_refused(sessionmaker, await lookup(client, token))


@pytest.mark.parametrize("kid", [None, 7, "", "../checkpoint", "checkpoint"])
async def test_missing_or_odd_kid(
    client: httpx.AsyncClient,
    sessionmaker: async_sessionmaker[AsyncSession],
    forge: Forge,
    kid: Any,
) -> None:
    token = await forge(headers={"kid": kid})
    await assert_refused(sessionmaker, await lookup(client, token))


async def test_lifetime_longer_than_15_minutes(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession], forge: Forge
) -> None:
    now = int(time.time())
    token = await forge(iat=now, nbf=now, exp=now + 3600)
    await assert_refused(sessionmaker, await lookup(client, token))


@pytest.mark.parametrize(
    ("claim", "value"),
    [
        ("exp", "9999999999"),
        ("exp", None),
        ("iat", "0"),
        ("nbf", [0]),
        ("exp", 1e12),
        ("exp", True),
        ("sub", 12345),
        ("jti", 12345),
        ("org", 12345),
        ("scope", ["register:lookup"]),
    ],
)
async def test_claim_of_the_wrong_type(
    client: httpx.AsyncClient,
    sessionmaker: async_sessionmaker[AsyncSession],
    forge: Forge,
    claim: str,
    value: Any,
) -> None:
    token = await forge(**{claim: value})
    await assert_refused(sessionmaker, await lookup(client, token))


@pytest.mark.parametrize(
    "token",
    [
        "garbage",
        "a.b.c",
        "..",
        "....",
        b64url_json({"alg": "ES256"}) + ".",
        b64url_json(["ES256"]) + "." + b64url_json({}) + ".",
        b64url_json({"alg": "ES256", "kid": "x"}) + "." + b64url(b"not json") + ".AAAA",
        "x" * 4000,
    ],
    ids=[
        "word",
        "dots",
        "empty-parts",
        "five-parts",
        "header-only",
        "list-header",
        "bad-json",
        "long",
    ],
)
async def test_garbage_token(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession], token: str
) -> None:
    await assert_refused(sessionmaker, await lookup(client, token))


# --- no token at all -----------------------------------------------------------------------


async def test_no_authorization_header(client: httpx.AsyncClient) -> None:
    response = await lookup(client)
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert_no_register_data(response)


async def test_basic_scheme_with_the_real_client_credentials(
    client: httpx.AsyncClient, world: World
) -> None:
    """The client's own id and secret are for /oauth/token, never for a lookup."""
    credentials = world["hospital_client"].credentials
    pair = f"{credentials['client_id']}:{credentials['client_secret']}".encode()
    response = await lookup(
        client, headers={"Authorization": f"Basic {base64.b64encode(pair).decode()}"}
    )
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert_no_register_data(response)


@pytest.mark.parametrize("authorization", ["Bearer", "Bearer ", "Token {token}", "{token}"])
async def test_malformed_authorization_header(
    client: httpx.AsyncClient, world: World, authorization: str
) -> None:
    value = authorization.format(token=world["hospital_client"].token)
    response = await lookup(client, headers={"Authorization": value})
    assert response.status_code == 401
    assert "www-authenticate" in response.headers
    assert_no_register_data(response)


async def test_token_in_the_query_string_is_not_accepted(
    client: httpx.AsyncClient, world: World
) -> None:
    response = await lookup(client, params={"access_token": world["hospital_client"].token})
    assert response.status_code == 401
    assert_no_register_data(response)


# --- the principal behind a good token ---------------------------------------------------


async def _new_client(
    sessionmaker: async_sessionmaker[AsyncSession], organisation: Organisation
) -> tuple[Client, str]:
    async with sessionmaker() as session:
        client, secret = create_client(
            session,
            actor="test:attacks",
            organisation=organisation,
            name=f"attack {uuid.uuid4().hex[:6]}",
            scopes=frozenset({Scope.lookup}),
        )
        await session.commit()
    return client, secret


async def _token(http: httpx.AsyncClient, client_id: str, secret: str) -> str:
    response = await http.post(
        "/oauth/token",
        data={"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret},
    )
    assert response.status_code == 200, response.text
    return response.json()["access_token"]


async def test_client_deactivated_after_its_token_was_issued_is_refused_at_once(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession], world: World
) -> None:
    system, secret = await _new_client(sessionmaker, world.orgs["hospital"])
    token = await _token(client, system.id, secret)
    assert (await lookup(client, token)).status_code == 200

    async with sessionmaker() as session:
        row = await session.get(Client, system.id)
        assert row is not None
        row.active = False
        await session.commit()

    event = await assert_refused(
        sessionmaker, await lookup(client, token), refusal="principal_inactive"
    )
    assert event.principal == f"client:{system.id}"


async def test_organisation_deactivated_after_the_token_was_issued_is_refused_at_once(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    async with sessionmaker() as session:
        organisation = create_organisation(
            session,
            actor="test:attacks",
            kind=OrganisationKind.emergency_department,
            name=f"Doomed ED {uuid.uuid4().hex[:6]}",
            ods_code=None,
            contact_name="ED safeguarding",
            contact_phone="020 7946 0555",
        )
        await session.commit()
    system, secret = await _new_client(sessionmaker, organisation)
    token = await _token(client, system.id, secret)
    assert (await lookup(client, token)).status_code == 200

    async with sessionmaker() as session:
        row = await session.get(Organisation, organisation.id)
        assert row is not None
        row.active = False
        await session.commit()

    await assert_refused(sessionmaker, await lookup(client, token), refusal="principal_inactive")


async def test_token_whose_org_claim_names_another_organisation(
    client: httpx.AsyncClient,
    sessionmaker: async_sessionmaker[AsyncSession],
    world: World,
    forge: Forge,
) -> None:
    token = await forge(org=str(world.orgs["police"].id))
    await assert_refused(sessionmaker, await lookup(client, token), refusal="principal_inactive")


async def test_well_signed_token_never_issued_is_refused(
    client: httpx.AsyncClient,
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    world: World,
    real_key: KeyFile,
) -> None:
    """A stolen signing key alone does not make tokens: the jti must be one we issued."""
    token = mint(settings, key=real_key, principal=world["hospital_client"])
    await assert_refused(sessionmaker, await lookup(client, token), refusal="principal_inactive")


async def test_revoked_token_is_refused(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession], forge: Forge
) -> None:
    token = await forge()
    assert (await lookup(client, token)).status_code == 200
    async with sessionmaker() as session:
        issued = await session.get(AccessToken, unverified_claims(token)["jti"])
        assert issued is not None
        issued.revoked_at = datetime.now(UTC)
        await session.commit()
    await assert_refused(sessionmaker, await lookup(client, token), refusal="principal_inactive")


async def test_local_authority_user_may_not_look_up(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession], world: World
) -> None:
    custodian = world["custodian_a"]
    response = await client.post("/v1/lookups", json=lookup_body(), headers=custodian.headers)
    event = await assert_refused(
        sessionmaker,
        response,
        status=403,
        refusal="not_a_reference_point",
        event_type="lookup",
    )
    assert event.principal == custodian.subject


async def test_token_without_the_lookup_scope(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession], forge: Forge
) -> None:
    token = await forge(scope="")
    await assert_refused(
        sessionmaker,
        await lookup(client, token),
        status=403,
        refusal="missing_scope",
        event_type="lookup",
    )


async def test_token_claiming_admin_scope_gains_nothing_beyond_lookup(
    client: httpx.AsyncClient,
    sessionmaker: async_sessionmaker[AsyncSession],
    world: World,
    forge: Forge,
) -> None:
    token = await forge(scope="admin register:lookup")
    response = await lookup(client, token)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "on_plan"

    # The admin API exists: the claimed scope must not open it.
    admin = await client.get(
        "/v1/admin/organisations", headers={"Authorization": f"Bearer {token}"}
    )
    assert admin.status_code == 403, admin.text
    assert admin.headers["content-type"] == "application/problem+json"
    assert str(world.orgs["hospital"].id) not in admin.text
    event = await audit_event(sessionmaker, admin)
    assert event is not None
    assert (event.event_type, event.outcome) == ("admin.refused", "refused")
