"""RFC 7523 client assertions (``private_key_jwt``) at /oauth/token: a system client
registers a public key and signs a short-lived JWT instead of sending a secret. One test
per attack, through real HTTP, with real keys (EC P-256 and RSA from ``cryptography``,
assertions signed with python-jose). Every refusal is RFC 6749 ``invalid_client`` (401)
and an audit event of the request (found by its ``x-request-id``) saying why.
"""

import asyncio
import hashlib
import hmac
import json
import secrets
import time
import uuid
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi import FastAPI
from jose import jwt
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.admin.service import create_client, create_key_client
from app.audit.models import AuditEvent
from app.auth.assertions import ASSERTION_TYPE, public_jwks
from app.auth.lockout import FAILED
from app.auth.models import UsedClientAssertion
from app.cli import main
from app.config import Settings
from app.identity.models import Client, Scope
from app.main import create_app
from tests.conftest import World
from tests.security.tokens import b64url, b64url_json

ACTOR = "test:assertions"


@dataclass(frozen=True)
class KeyClient:
    client_id: str
    private_pem: str
    algorithm: str


def _private_pem(algorithm: str) -> str:
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey = (
        ec.generate_private_key(ec.SECP256R1())
        if algorithm == "ES256"
        else rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def _public_pem(private_pem: str) -> str:
    key = serialization.load_pem_private_key(private_pem.encode(), password=None)
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


async def _register(
    sessionmaker: async_sessionmaker[AsyncSession], world: World, algorithm: str
) -> KeyClient:
    private_pem = _private_pem(algorithm)
    async with sessionmaker() as session:
        client = create_key_client(
            session,
            actor=ACTOR,
            organisation=world.orgs["hospital"],
            name=f"EPR {uuid.uuid4().hex[:6]}",
            scopes=frozenset({Scope.lookup}),
            public_jwks=public_jwks(_public_pem(private_pem)),
        )
        await session.commit()
    return KeyClient(client.id, private_pem, algorithm)


@pytest.fixture(params=["ES256", "RS256"])
async def key_client(
    request: pytest.FixtureRequest, sessionmaker: async_sessionmaker[AsyncSession], world: World
) -> KeyClient:
    """A fresh hospital system that authenticates with its own key (so no test's
    failures count towards another's lockout)."""
    return await _register(sessionmaker, world, request.param)


@pytest.fixture
async def ec_client(sessionmaker: async_sessionmaker[AsyncSession], world: World) -> KeyClient:
    return await _register(sessionmaker, world, "ES256")


def endpoint(settings: Settings) -> str:
    return settings.client_assertion_audience


def assertion(
    settings: Settings, signer: KeyClient, *, key: str | None = None, **changes: Any
) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": signer.client_id,
        "sub": signer.client_id,
        "aud": endpoint(settings),
        "iat": now,
        "exp": now + 60,
        "jti": secrets.token_urlsafe(16),
    }
    claims.update(changes)
    claims = {name: value for name, value in claims.items() if value is not None}
    return jwt.encode(claims, key or signer.private_pem, algorithm=signer.algorithm)


async def token_request(http: httpx.AsyncClient, signed: str, **extra: str) -> httpx.Response:
    return await http.post(
        "/oauth/token",
        data={
            "grant_type": "client_credentials",
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": signed,
            **extra,
        },
    )


async def events_of(
    sessionmaker: async_sessionmaker[AsyncSession], response: httpx.Response
) -> list[AuditEvent]:
    async with sessionmaker() as session:
        statement = select(AuditEvent).where(
            AuditEvent.request_id == response.headers["x-request-id"]
        )
        return list((await session.scalars(statement)).all())


async def assert_refused(
    sessionmaker: async_sessionmaker[AsyncSession], response: httpx.Response, reason: str
) -> AuditEvent:
    assert response.status_code == 401, response.text
    assert response.json()["error"] == "invalid_client"
    assert "access_token" not in response.text
    assert response.headers["cache-control"] == "no-store"
    events = await events_of(sessionmaker, response)
    assert len(events) == 1, "the refusal was not audited (once)"
    event = events[0]
    assert (event.event_type, event.outcome, event.refusal) == (FAILED, "refused", reason)
    assert event.detail is not None
    assert event.detail["client_auth"] == "private_key_jwt"
    return event


# --- the control: a good assertion gets a token ---------------------------------------


async def test_a_signed_assertion_gets_a_token(
    client: httpx.AsyncClient,
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    key_client: KeyClient,
) -> None:
    response = await token_request(client, assertion(settings, key_client))
    assert response.status_code == 200, response.text
    assert response.json()["scope"] == Scope.lookup.value
    [event] = await events_of(sessionmaker, response)
    assert (event.event_type, event.outcome) == ("auth.signed_in", "issued")
    assert event.principal == f"client:{key_client.client_id}"
    # The token works for a lookup.
    lookup = await client.post(
        "/v1/lookups",
        json={
            "subject": {"nhs_number": "9434765919"},
            "purpose": "unscheduled_care",
            "reason": "attended ED",
            "enquirer": {"id": f"E-{uuid.uuid4().hex[:8]}", "name": "Dr A", "role": "registrar"},
        },
        headers={"Authorization": f"Bearer {response.json()['access_token']}"},
    )
    assert lookup.status_code == 200, lookup.text


async def test_the_client_id_parameter_may_name_the_client(
    client: httpx.AsyncClient, settings: Settings, ec_client: KeyClient
) -> None:
    signed = assertion(settings, ec_client)
    response = await token_request(client, signed, client_id=ec_client.client_id)
    assert response.status_code == 200, response.text


# --- attacks ----------------------------------------------------------------------------


async def test_alg_none_is_refused(
    client: httpx.AsyncClient,
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    ec_client: KeyClient,
) -> None:
    now = int(time.time())
    claims = {
        "iss": ec_client.client_id,
        "sub": ec_client.client_id,
        "aud": endpoint(settings),
        "iat": now,
        "exp": now + 60,
        "jti": secrets.token_urlsafe(16),
    }
    unsigned = f"{b64url_json({'alg': 'none', 'typ': 'JWT'})}.{b64url_json(claims)}."
    response = await token_request(client, unsigned)
    await assert_refused(sessionmaker, response, "assertion_algorithm_refused")


async def test_hs256_with_the_public_key_as_secret_is_refused(
    client: httpx.AsyncClient,
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    ec_client: KeyClient,
) -> None:
    """Key confusion: HMAC keyed with the public key that anyone may know."""
    now = int(time.time())
    claims = {
        "iss": ec_client.client_id,
        "sub": ec_client.client_id,
        "aud": endpoint(settings),
        "iat": now,
        "exp": now + 60,
        "jti": secrets.token_urlsafe(16),
    }
    public = _public_pem(ec_client.private_pem).encode()
    signing_input = f"{b64url_json({'alg': 'HS256', 'typ': 'JWT'})}.{b64url_json(claims)}"
    mac = hmac.new(public, signing_input.encode(), hashlib.sha256).digest()
    response = await token_request(client, f"{signing_input}.{b64url(mac)}")
    await assert_refused(sessionmaker, response, "assertion_algorithm_refused")


async def test_a_key_not_registered_is_refused(
    client: httpx.AsyncClient,
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    key_client: KeyClient,
) -> None:
    forged = assertion(settings, key_client, key=_private_pem(key_client.algorithm))
    await assert_refused(
        sessionmaker, await token_request(client, forged), "assertion_bad_signature"
    )


async def test_an_expired_assertion_is_refused(
    client: httpx.AsyncClient,
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    ec_client: KeyClient,
) -> None:
    past = int(time.time()) - settings.token_leeway_seconds - 120
    signed = assertion(settings, ec_client, iat=past - 60, exp=past)
    await assert_refused(sessionmaker, await token_request(client, signed), "assertion_expired")


async def test_an_assertion_living_more_than_five_minutes_is_refused(
    client: httpx.AsyncClient,
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    ec_client: KeyClient,
) -> None:
    far = int(time.time()) + 300 + settings.token_leeway_seconds + 60
    signed = assertion(settings, ec_client, exp=far)
    response = await token_request(client, signed)
    await assert_refused(sessionmaker, response, "assertion_lifetime_too_long")


@pytest.mark.parametrize(
    "audience",
    ["https://elsewhere.example/oauth/token", "cp-register", ["https://other.example/token"]],
)
async def test_an_assertion_for_another_audience_is_refused(
    client: httpx.AsyncClient,
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    ec_client: KeyClient,
    audience: Any,
) -> None:
    signed = assertion(settings, ec_client, aud=audience)
    response = await token_request(client, signed)
    await assert_refused(sessionmaker, response, "assertion_wrong_audience")


async def test_an_issuer_other_than_the_subject_is_refused(
    client: httpx.AsyncClient,
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    ec_client: KeyClient,
) -> None:
    signed = assertion(settings, ec_client, iss="cpr-someone-else")
    response = await token_request(client, signed)
    await assert_refused(sessionmaker, response, "assertion_wrong_issuer")


@pytest.mark.parametrize("missing", ["exp", "iat", "jti"])
async def test_an_assertion_without_a_required_claim_is_refused(
    client: httpx.AsyncClient,
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    ec_client: KeyClient,
    missing: str,
) -> None:
    signed = assertion(settings, ec_client, **{missing: None})
    await assert_refused(sessionmaker, await token_request(client, signed), "assertion_malformed")


async def test_an_unknown_client_is_refused(
    client: httpx.AsyncClient,
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
) -> None:
    stranger = KeyClient(f"cpr-{secrets.token_hex(8)}", _private_pem("ES256"), "ES256")
    response = await token_request(client, assertion(settings, stranger))
    event = await assert_refused(sessionmaker, response, "assertion_unknown_client")
    assert event.principal == f"login:client:{stranger.client_id}"


async def test_a_replayed_assertion_is_refused(
    client: httpx.AsyncClient,
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    key_client: KeyClient,
) -> None:
    signed = assertion(settings, key_client)
    first = await token_request(client, signed)
    assert first.status_code == 200, first.text
    again = await token_request(client, signed)
    await assert_refused(sessionmaker, again, "assertion_replayed")


async def test_a_concurrent_burst_of_one_assertion_gets_one_token(
    client: httpx.AsyncClient,
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    ec_client: KeyClient,
) -> None:
    signed = assertion(settings, ec_client)
    burst = settings.login_failures_before_lockout  # one success, the rest under lockout
    responses = await asyncio.gather(*(token_request(client, signed) for _ in range(burst)))
    assert [r.status_code for r in responses].count(200) == 1, [r.text for r in responses]
    for response in responses:
        if response.status_code != 200:
            assert response.status_code in (401, 429), response.text
            assert len(await events_of(sessionmaker, response)) == 1
    async with sessionmaker() as session:
        used = await session.scalar(
            select(func.count())
            .select_from(UsedClientAssertion)
            .where(UsedClientAssertion.client_id == ec_client.client_id)
        )
    assert used == 1


async def test_a_client_refused_its_secret_cannot_use_it(
    client: httpx.AsyncClient,
    sessionmaker: async_sessionmaker[AsyncSession],
    world: World,
) -> None:
    async with sessionmaker() as session:
        registered, secret = create_client(
            session,
            actor=ACTOR,
            organisation=world.orgs["hospital"],
            name=f"EPR {uuid.uuid4().hex[:6]}",
            scopes=frozenset({Scope.lookup}),
        )
        registered.secret_allowed = False
        await session.commit()
    response = await client.post(
        "/oauth/token",
        data={
            "grant_type": "client_credentials",
            "client_id": registered.id,
            "client_secret": secret,
        },
    )
    assert response.status_code == 401, response.text
    assert response.json()["error"] == "invalid_client"
    [event] = await events_of(sessionmaker, response)
    assert (event.event_type, event.refusal) == (FAILED, "secret_not_allowed")


async def test_a_secret_and_an_assertion_together_are_refused(
    client: httpx.AsyncClient, settings: Settings, ec_client: KeyClient
) -> None:
    response = await token_request(client, assertion(settings, ec_client), client_secret="x")
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"


# --- registering keys -------------------------------------------------------------------


async def test_the_operator_registers_a_client_with_a_key_and_replaces_it(
    client: httpx.AsyncClient,
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    world: World,
) -> None:
    headers = world["operator"].headers
    first_key = _private_pem("ES256")
    created = await client.post(
        "/v1/admin/clients",
        json={
            "organisation_id": str(world.orgs["hospital"].id),
            "name": "EPR with a key",
            "scopes": [Scope.lookup.value],
            "public_key": _public_pem(first_key),
        },
        headers=headers,
    )
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["client_secret"] is None
    assert body["secret_allowed"] is False
    assert body["public_jwks"]["keys"][0]["kty"] == "EC"
    signer = KeyClient(body["client_id"], first_key, "ES256")
    assert (await token_request(client, assertion(settings, signer))).status_code == 200

    # Replaced by an RSA key, sent as a JWKS: the old key stops working.
    second_key = _private_pem("RS256")
    jwks = public_jwks(_public_pem(second_key))
    replaced = await client.put(
        f"/v1/admin/clients/{signer.client_id}/public-key",
        json={"public_key": jwks},
        headers=headers,
    )
    assert replaced.status_code == 200, replaced.text
    assert replaced.json()["public_jwks"]["keys"][0]["kty"] == "RSA"
    stale = await token_request(client, assertion(settings, signer))
    await assert_refused(sessionmaker, stale, "assertion_bad_signature")
    renewed = KeyClient(signer.client_id, second_key, "RS256")
    assert (await token_request(client, assertion(settings, renewed))).status_code == 200


@pytest.mark.parametrize(
    "offered",
    [
        "not a key",
        {"keys": [{"kty": "oct", "k": "c2VjcmV0"}]},
        "private",
        "short_rsa",
    ],
)
async def test_a_private_or_symmetric_key_is_not_accepted(
    client: httpx.AsyncClient, world: World, offered: Any
) -> None:
    if offered == "private":
        offered = _private_pem("ES256")
    elif offered == "short_rsa":
        weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505
        short = weak.public_key()
        offered = short.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()
    response = await client.post(
        "/v1/admin/clients",
        json={
            "organisation_id": str(world.orgs["hospital"].id),
            "name": "EPR with a bad key",
            "scopes": [Scope.lookup.value],
            "public_key": offered,
        },
        headers=world["operator"].headers,
    )
    assert response.status_code == 422, response.text


async def test_the_cli_registers_a_key(
    client: httpx.AsyncClient,
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    world: World,
    cli_env: None,
    tmp_path: Path,
) -> None:
    private_pem = _private_pem("ES256")
    pem_file = tmp_path / "epr.pem"
    pem_file.write_text(_public_pem(private_pem))
    organisation = str(world.orgs["hospital"].id)
    created = await asyncio.to_thread(
        CliRunner().invoke,
        main,
        [
            "client",
            "create",
            "--org",
            organisation,
            "--name",
            "CLI EPR",
            "--public-key",
            str(pem_file),
        ],
    )
    assert created.exit_code == 0, created.output
    assert "client_secret" not in created.output
    client_id = created.output.split("client_id: ")[1].split()[0]
    signer = KeyClient(client_id, private_pem, "ES256")
    assert (await token_request(client, assertion(settings, signer))).status_code == 200

    # set-key: a JWKS file for a client that had a secret, which it then refuses.
    async with sessionmaker() as session:
        with_secret, _secret = create_client(
            session,
            actor=ACTOR,
            organisation=world.orgs["hospital"],
            name="EPR moving to keys",
            scopes=frozenset({Scope.lookup}),
        )
        await session.commit()
    rsa_key = _private_pem("RS256")
    jwks_file = tmp_path / "epr.jwks.json"
    jwks_file.write_text(json.dumps(public_jwks(_public_pem(rsa_key))))
    set_key = await asyncio.to_thread(
        CliRunner().invoke,
        main,
        ["client", "set-key", with_secret.id, str(jwks_file), "--refuse-secret"],
    )
    assert set_key.exit_code == 0, set_key.output
    assert "secret refused" in set_key.output
    async with sessionmaker() as session:
        stored = await session.get(Client, with_secret.id)
        assert stored is not None
        assert stored.secret_allowed is False
        events = (
            await session.scalars(
                select(AuditEvent).where(AuditEvent.event_type == "admin.client_key_set")
            )
        ).all()
    assert any(e.detail and e.detail.get("client_id") == with_secret.id for e in events)
    renewed = KeyClient(with_secret.id, rsa_key, "RS256")
    assert (await token_request(client, assertion(settings, renewed))).status_code == 200


async def test_tokens_purge_forgets_expired_assertion_ids_only(
    sessionmaker: async_sessionmaker[AsyncSession], cli_env: None
) -> None:
    client_id, now = f"cpr-{secrets.token_hex(8)}", datetime.now(UTC)
    async with sessionmaker() as session:
        session.add_all(
            [
                UsedClientAssertion(
                    client_id=client_id, jti="old", expires_at=now - timedelta(minutes=1)
                ),
                UsedClientAssertion(
                    client_id=client_id, jti="live", expires_at=now + timedelta(minutes=5)
                ),
            ]
        )
        await session.commit()
    purged = await asyncio.to_thread(CliRunner().invoke, main, ["tokens", "purge"])
    assert purged.exit_code == 0, purged.output
    async with sessionmaker() as session:
        kept = await session.scalars(
            select(UsedClientAssertion.jti).where(UsedClientAssertion.client_id == client_id)
        )
        assert kept.all() == ["live"]


async def test_one_assertion_sent_to_two_replicas_at_once_gets_one_token(
    app: FastAPI,
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    ec_client: KeyClient,
) -> None:
    """Two app instances over the one database, as two replicas: neither process's
    memory decides, the database's primary key on the jti does."""
    replica = create_app(settings)
    signed = assertion(settings, ec_client)
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(replica.router.lifespan_context(replica))
        senders = [
            await stack.enter_async_context(
                httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=target, client=(f"198.51.100.{n}", 50000)),
                    base_url="http://testserver",
                )
            )
            for n, target in enumerate((app, replica, app, replica), start=20)
        ]
        responses = await asyncio.gather(*(token_request(http, signed) for http in senders))
    codes = [r.status_code for r in responses]
    assert codes.count(200) == 1, [r.text for r in responses]
    for response in responses:
        if response.status_code != 200:
            await assert_refused(sessionmaker, response, "assertion_replayed")
