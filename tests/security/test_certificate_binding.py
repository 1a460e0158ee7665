"""Tokens bound to the client certificate a hospital system presented (RFC 8705).

Behind the mutual-TLS front (deploy/), the front verifies the certificate and passes it
on; a token issued over such a connection carries the certificate's thumbprint
(``cnf`` / ``x5t#S256``) and is refused without that certificate: a token copied off a
hospital system is no use without the system's private key. Real certificates from a
real test CA (trustme); tokens from the real token endpoint, checked with the JWKS.
"""

import base64
import hashlib
from collections.abc import AsyncIterator
from urllib.parse import quote

import httpx
import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from fastapi import FastAPI
from jose import jwt
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.audit.models import AuditEvent
from app.config import Settings
from app.main import create_app
from tests.conftest import NHS, World

CERT_HEADER = "X-Client-Cert"
ENQUIRY = {
    "subject": {"nhs_number": NHS["never"]},
    "purpose": "unscheduled_care",
    "reason": "certificate binding test",
    "enquirer": {"id": "C1234567", "name": "Dr Bound", "role": "registrar"},
}


def _front(pem: bytes | None, verified: str = "SUCCESS") -> dict[str, str]:
    """The headers the front sets on every request it forwards."""
    if pem is None:
        return {"X-Client-Verify": "NONE", CERT_HEADER: ""}
    return {"X-Client-Verify": verified, CERT_HEADER: quote(pem.decode())}


def _thumbprint(pem: bytes) -> str:
    der = x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()


@pytest.fixture(scope="module")
def certificates() -> tuple[bytes, bytes]:
    authority = trustme.CA()
    system = authority.issue_cert("hospital-system.example.nhs.uk")
    other = authority.issue_cert("another-system.example.nhs.uk")
    return system.cert_chain_pems[0].bytes(), other.cert_chain_pems[0].bytes()


@pytest.fixture(scope="module")
async def fronted(settings: Settings) -> AsyncIterator[FastAPI]:
    """The service as deployed behind the mutual-TLS front."""
    application = create_app(settings.model_copy(update={"client_cert_header": CERT_HEADER}))
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def http(fronted: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=fronted, client=("203.0.113.90", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


async def _token(http: httpx.AsyncClient, world: World, headers: dict[str, str]) -> str:
    answer = await http.post(
        "/oauth/token", data=world["hospital_client"].credentials, headers=headers
    )
    assert answer.status_code == 200, answer.text
    return str(answer.json()["access_token"])


async def _lookup(http: httpx.AsyncClient, token: str, headers: dict[str, str]) -> httpx.Response:
    return await http.post(
        "/v1/lookups", json=ENQUIRY, headers={"Authorization": f"Bearer {token}"} | headers
    )


async def test_a_bound_token_works_only_with_its_certificate(
    http: httpx.AsyncClient,
    world: World,
    certificates: tuple[bytes, bytes],
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    system, other = certificates
    token = await _token(http, world, _front(system))
    claims = jwt.get_unverified_claims(token)
    assert claims["cnf"] == {"x5t#S256": _thumbprint(system)}

    assert (await _lookup(http, token, _front(system))).status_code == 200
    for headers in (_front(None), _front(other), _front(system, verified="FAILED:expired"), {}):
        refused = await _lookup(http, token, headers)
        assert refused.status_code == 401, headers
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert "categories" not in refused.text
        assert "contact" not in refused.text
    # Every other route refuses it the same way (the principal dependency): 401, before
    # the 403 that the right certificate would get on a custodian's route.
    bearer = {"Authorization": f"Bearer {token}"}
    assert (await http.get("/v1/audit/events", headers=bearer | _front(other))).status_code == 401
    assert (await http.get("/v1/audit/events", headers=bearer | _front(system))).status_code == 403
    async with sessionmaker() as session:
        refusals = (
            await session.scalars(
                select(AuditEvent)
                .where(AuditEvent.event_type == "auth.refused")
                .order_by(AuditEvent.occurred_at.desc())
                .limit(5)
            )
        ).all()
    assert all(
        e.detail["problem"] == "token bound to a client certificate not presented" for e in refusals
    )


async def test_a_token_issued_without_a_certificate_is_not_bound(
    http: httpx.AsyncClient, world: World, certificates: tuple[bytes, bytes]
) -> None:
    system, _ = certificates
    token = await _token(http, world, _front(None))
    assert "cnf" not in jwt.get_unverified_claims(token)
    assert (await _lookup(http, token, _front(None))).status_code == 200
    assert (await _lookup(http, token, _front(system))).status_code == 200


async def test_certificate_headers_are_ignored_unless_the_front_is_configured(
    client: httpx.AsyncClient, world: World, certificates: tuple[bytes, bytes]
) -> None:
    """Without CPR_CLIENT_CERT_HEADER, a caller's own headers bind nothing."""
    system, _ = certificates
    answer = await client.post(
        "/oauth/token", data=world["hospital_client"].credentials, headers=_front(system)
    )
    assert answer.status_code == 200
    assert "cnf" not in jwt.get_unverified_claims(answer.json()["access_token"])


async def test_an_unverified_or_unreadable_certificate_binds_nothing(
    http: httpx.AsyncClient, world: World, certificates: tuple[bytes, bytes]
) -> None:
    system, _ = certificates
    for headers in (
        _front(system, verified="FAILED:unable to verify"),
        {"X-Client-Verify": "SUCCESS", CERT_HEADER: quote("-----BEGIN CERTIFICATE-----\nnot")},
    ):
        token = await _token(http, world, headers)
        assert "cnf" not in jwt.get_unverified_claims(token)
