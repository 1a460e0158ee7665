"""Key rotation: new tokens use the new key, old ones work through the overlap, a
retired key's tokens are refused, and JWKS publishes exactly the current keys."""

import secrets
import time
from datetime import UTC, datetime, timedelta

import httpx
from jose import jwt
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.audit.models import AuditEvent
from app.auth.keys import create_signing_key, rotate_signing_key
from app.auth.models import AccessToken
from app.config import Settings
from app.main import create_app
from tests.conftest import NHS, World

BODY = {
    "subject": {"nhs_number": NHS["neglect"]},
    "purpose": "unscheduled_care",
    "reason": "rotation check",
    "enquirer": {"id": "C1", "name": "Dr A", "role": "registrar"},
}


def _kid(token: str) -> str:
    return jwt.get_unverified_header(token)["kid"]


async def test_rotation_signs_with_the_new_key_and_honours_old_tokens_through_the_overlap(
    client: httpx.AsyncClient,
    world: World,
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    old_token = world["police_client"].token
    async with sessionmaker() as session:
        new_key = await rotate_signing_key(
            session, settings.key_dir, overlap_seconds=3600, actor="test:rotate"
        )
        await session.commit()

    replica = create_app(settings)  # another replica: it reads the key set from the database
    async with (
        replica.router.lifespan_context(replica),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=replica), base_url="http://r") as http,
    ):
        issued = await http.post("/oauth/token", data=world["hospital_client"].credentials)
        kids = {key["kid"] for key in (await http.get("/.well-known/jwks.json")).json()["keys"]}
        old_still_works = await http.post(
            "/v1/lookups",
            json={**BODY, "purpose": "police_investigation"},
            headers={"Authorization": f"Bearer {old_token}"},
        )
        new_works = await http.post(
            "/v1/lookups",
            json=BODY,
            headers={"Authorization": f"Bearer {issued.json()['access_token']}"},
        )

    assert _kid(issued.json()["access_token"]) == new_key.kid
    assert {new_key.kid, _kid(old_token)} <= kids
    assert old_still_works.status_code == 200
    assert new_works.status_code == 200
    async with sessionmaker() as session:
        rotated = await session.scalar(
            select(AuditEvent)
            .where(AuditEvent.event_type == "keys.rotated")
            .order_by(AuditEvent.occurred_at.desc())
        )
    assert rotated is not None
    assert rotated.detail["new_kid"] == new_key.kid


async def test_token_signed_by_a_retired_key_is_refused_and_the_key_unpublished(
    client: httpx.AsyncClient,
    world: World,
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    async with sessionmaker() as session:
        key = create_signing_key(session, settings.key_dir)
        key.retires_at = datetime.now(UTC) - timedelta(seconds=1)
        principal = world["hospital_client"]
        now = int(time.time())
        claims = {
            "iss": settings.token_issuer,
            "aud": settings.token_audience,
            "sub": principal.subject,
            "org": str(principal.organisation.id),
            "scope": "register:lookup",
            "iat": now,
            "nbf": now,
            "exp": now + 600,
            "jti": secrets.token_urlsafe(16),
        }
        # Recorded as issued, so only the retired key can be the reason for refusal.
        session.add(
            AccessToken(
                jti=claims["jti"],
                subject=principal.subject,
                expires_at=datetime.now(UTC) + timedelta(minutes=10),
            )
        )
        await session.commit()
    pem = (settings.key_dir / f"{key.kid}.pem").read_text()
    token = jwt.encode(claims, pem, algorithm="ES256", headers={"kid": key.kid})

    replica = create_app(settings)
    async with (
        replica.router.lifespan_context(replica),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=replica), base_url="http://r") as http,
    ):
        refused = await http.post(
            "/v1/lookups", json=BODY, headers={"Authorization": f"Bearer {token}"}
        )
        kids = {k["kid"] for k in (await http.get("/.well-known/jwks.json")).json()["keys"]}

    assert refused.status_code == 401
    assert "categories" not in refused.text
    assert key.kid not in kids
