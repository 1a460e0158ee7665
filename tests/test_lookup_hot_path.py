"""The lookup's fast path (docs/performance.md): what it must not change.

Verified tokens are cached per process, but a cached token is refused as soon as
it expires or its key retires; a database that cannot be read fails the lookup
closed (503, nothing disclosed); a connection that fails is never handed out again;
the audit row written through the Core INSERT is the row the ORM would write.
"""

import asyncio
import dataclasses
import time
import uuid
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from jose import jwt
from sqlalchemy import select, text
from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.audit.models import AuditEvent
from app.auth.keys import KeyRing, VerifiedToken
from app.auth.tokens import InvalidToken, verify_token
from app.config import Settings
from app.db import DatabaseUnavailable, _AsyncpgConnection
from app.lookup import service as lookup_service
from app.main import create_app
from tests.conftest import NHS, World, _postgres_admin


def _body() -> dict[str, Any]:
    return {
        "subject": {"nhs_number": NHS["neglect"]},
        "purpose": "unscheduled_care",
        "reason": "attended ED with unexplained bruising",
        "enquirer": {"id": f"HP-{uuid.uuid4().hex[:10]}", "name": "Dr A Jones", "role": "SHO"},
    }


def _cache_key(token: str, settings: Settings) -> tuple[str, str, str, int]:
    return (token, settings.token_issuer, settings.token_audience, settings.token_ttl_seconds)


async def test_a_verified_token_is_cached_and_its_times_still_checked(
    app: FastAPI, world: World, settings: Settings
) -> None:
    keyring: KeyRing = app.state.keyring
    token = world["hospital_client"].token
    claims = await verify_token(keyring, settings, token, certificate=None)
    cached = keyring.verified_tokens[_cache_key(token, settings)]
    assert cached.claims == claims
    assert cached.kid == jwt.get_unverified_header(token)["kid"]

    # A cached entry is trusted only while its time claims hold: an expired one is
    # dropped and the token verified in full, which here fails (not a JWT at all).
    now = int(time.time())
    stale = VerifiedToken(
        claims=dataclasses.replace(claims, expires_at=now - settings.token_leeway_seconds - 5),
        kid=cached.kid,
        not_before=now - 600,
        issued_at=now - 600,
    )
    keyring.verified_tokens[_cache_key("not-a-jwt", settings)] = stale
    with pytest.raises(InvalidToken):
        await verify_token(keyring, settings, "not-a-jwt", certificate=None)
    assert _cache_key("not-a-jwt", settings) not in keyring.verified_tokens

    early = dataclasses.replace(stale, not_before=now + settings.token_leeway_seconds + 60)
    early = dataclasses.replace(early, claims=claims)
    keyring.verified_tokens[_cache_key("not-a-jwt", settings)] = early
    with pytest.raises(InvalidToken):
        await verify_token(keyring, settings, "not-a-jwt", certificate=None)


async def test_a_cached_token_whose_key_is_not_current_is_refused(
    app: FastAPI, world: World, settings: Settings
) -> None:
    keyring: KeyRing = app.state.keyring
    token = world["hospital_client"].token
    claims = await verify_token(keyring, settings, token, certificate=None)
    now = int(time.time())
    unknown_key = VerifiedToken(claims=claims, kid="retired-kid", not_before=now, issued_at=now)
    keyring.verified_tokens[_cache_key("not-a-jwt", settings)] = unknown_key
    with pytest.raises(InvalidToken):
        await verify_token(keyring, settings, "not-a-jwt", certificate=None)


async def test_a_database_that_cannot_be_read_fails_the_lookup_closed(
    client: httpx.AsyncClient, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def unreadable(*_: Any) -> None:
        raise DatabaseUnavailable("ConnectionDoesNotExistError")

    monkeypatch.setattr(lookup_service, "principal_and_limits", unreadable)
    response = await client.post(
        "/v1/lookups", json=_body(), headers=world["hospital_client"].headers
    )
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    assert int(response.headers["retry-after"]) > 0
    for marker in ("on_plan", "neglect", "categories", "lookup_id", "contact"):
        assert marker not in response.text


class _FailingDriver:
    def __init__(self, error: Exception) -> None:
        self.error = error

    async def fetch(self, *_: Any) -> list[Any]:
        raise self.error

    def is_closed(self) -> bool:
        return False


@dataclasses.dataclass
class _Pooled:
    driver_connection: Any


async def test_a_connection_that_fails_is_marked_broken_a_refusal_is_not() -> None:
    dialect = PGDialect_asyncpg()
    statement = lookup_service._PRINCIPAL_AND_LIMITS[("client", "postgresql")]
    lost = _AsyncpgConnection(_Pooled(_FailingDriver(ConnectionResetError())), dialect)
    with pytest.raises(DatabaseUnavailable):
        await lost.fetch(statement, {})
    assert lost.broken
    assert lost.lost
    refused = _AsyncpgConnection(_Pooled(_FailingDriver(asyncpg.RaiseError("no"))), dialect)
    with pytest.raises(DatabaseUnavailable):
        await refused.fetch(statement, {})
    assert not refused.broken
    assert not refused.lost


async def test_the_lookup_event_is_the_row_the_orm_would_write(
    client: httpx.AsyncClient,
    world: World,
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    before = datetime.now(UTC)
    response = await client.post(
        "/v1/lookups", json=_body(), headers=world["hospital_client"].headers
    )
    assert response.status_code == 200
    lookup_id = uuid.UUID(response.json()["lookup_id"])
    async with sessionmaker() as session:
        event = await session.get(AuditEvent, lookup_id)
        assert event is not None
        # Columns left unset are SQL NULL, as the ORM leaves them, not JSON null.
        nulls = (
            await session.execute(
                select(AuditEvent.refusal.is_(None), text("audit_events.detail IS NULL")).where(
                    AuditEvent.id == lookup_id
                )
            )
        ).one()
        queued = await session.scalar(
            text("SELECT count(*) FROM audit_unsealed WHERE event_id = :id"),
            {"id": lookup_id if not settings.is_sqlite else lookup_id.hex},
        )
    assert event.outcome == "on_plan"
    assert before - timedelta(seconds=1) <= event.occurred_at <= datetime.now(UTC)
    assert event.occurred_at.tzinfo is not None
    assert event.principal == world["hospital_client"].subject
    assert event.organisation_id == world.orgs["hospital"].id
    assert event.enquirer is not None
    assert event.enquirer_id == event.enquirer["id"]
    assert event.query == {
        "nhs_number": NHS["neglect"],
        "given_name": None,
        "family_name": None,
        "date_of_birth": None,
    }
    assert event.disclosed == {k: v for k, v in response.json().items() if k != "lookup_id"}
    assert event.entry_id == world.entries["neglect"].id
    assert event.source_address == "203.0.113.7"
    assert event.request_id == response.headers["x-request-id"]
    assert tuple(nulls) == (True, False)  # a match is in detail
    # The database's trigger queued it for sealing (unless the sequencer already has).
    assert queued in (0, 1)


async def test_lookups_recover_when_the_database_ends_every_connection(
    world: World,
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    """A restart or failover of PostgreSQL ends the sessions the pool holds. With no
    pre-ping, the lookup that meets a dead connection fails closed (503) and takes
    the pool's other connections with it, so the next lookup is answered. (On a
    replica of its own, so that no other test's pool is touched.)"""
    if settings.is_sqlite:
        pytest.skip("PostgreSQL only: SQLite has no server to end a session")
    headers = world["hospital_client"].headers
    replica = create_app(settings)
    async with (
        replica.router.lifespan_context(replica),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=replica), base_url="http://r") as http,
    ):
        assert (await http.post("/v1/lookups", json=_body(), headers=headers)).status_code == 200
        engine = replica.state.sessionmaker.kw["bind"]
        pids = []
        async with AsyncExitStack() as held:  # every connection the pool holds, and more
            for _ in range(5):
                connection = await held.enter_async_context(engine.connect())
                pids.append(await connection.scalar(text("SELECT pg_backend_pid()")))
        await _postgres_admin(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE pid IN ({', '.join(str(pid) for pid in pids)})"
        )

        statuses = []
        answered = []
        for _ in range(4):
            response = await http.post("/v1/lookups", json=_body(), headers=headers)
            statuses.append(response.status_code)
            if response.status_code == 200:
                answered.append(uuid.UUID(response.json()["lookup_id"]))
            else:
                assert response.status_code == 503
                assert "on_plan" not in response.text
    # At most the one that met a dead connection (none if the sequencer met one first).
    assert statuses.count(503) <= 1, statuses
    assert statuses[-1] == 200
    async with sessionmaker() as session:
        recorded = set(
            await session.scalars(select(AuditEvent.id).where(AuditEvent.id.in_(answered)))
        )
    assert recorded == set(answered)


async def test_lookups_beyond_the_pool_do_not_wait_on_each_other_for_the_key_set(
    world: World, settings: Settings
) -> None:
    """A replica's first lookups all need the key set, which is read on a connection of
    its own from the same pool. Lookups that held every connection while waiting for
    it would wait until the pool timed out (a deadlock seen under load when the key
    set's refresh fell due): the token is checked before a connection is taken."""
    if settings.is_sqlite:
        pytest.skip("PostgreSQL only: the pool size setting sizes PostgreSQL's pool")
    replica = create_app(
        settings.model_copy(
            update={
                "database_pool_size": 2,
                "sealing_enabled": False,
                "notifications_enabled": False,
            }
        )
    )
    headers = world["hospital_client"].headers
    async with (
        replica.router.lifespan_context(replica),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=replica), base_url="http://r") as http,
    ):
        responses = await asyncio.wait_for(
            asyncio.gather(
                *(http.post("/v1/lookups", json=_body(), headers=headers) for _ in range(6))
            ),
            timeout=20,
        )
    assert [r.status_code for r in responses] == [200] * 6
