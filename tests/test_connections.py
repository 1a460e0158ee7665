"""One way to the database, established and checked: every connection acts as the
configured role whatever is rolled back, a connection in a state nobody established
is never used, every answered lookup has its committed event, and a role that
could change the log, or that cannot be taken, keeps the service from starting."""

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.util import greenlet_spawn

from app.audit.chain import CheckpointSigner
from app.audit.models import AuditEvent
from app.config import Environment, Settings
from app.db import WrongRole
from app.main import create_app
from tests.conftest import NHS, POSTGRES_ADMIN_URL, DatabaseUnderTest, World
from tests.enquiries import ask
from tests.production import APP_ROLE, run_as_superuser


def _postgres_only(settings: Settings) -> None:
    if settings.is_sqlite:
        pytest.skip("roles and connection state are PostgreSQL's; SQLite has one file owner")


@asynccontextmanager
async def running(settings: Settings, **overrides: Any) -> AsyncIterator[FastAPI]:
    """An app instance of its own: its own, empty, pool."""
    app = create_app(settings.model_copy(update=overrides))
    async with app.router.lifespan_context(app):
        yield app


@asynccontextmanager
async def http(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, client=("203.0.113.9", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


async def _events(admin: async_sessionmaker[AsyncSession], ids: list[str]) -> int:
    """How many of these lookups' events are committed, read on a connection of its own."""
    async with admin() as session:
        return int(
            await session.scalar(
                select(func.count())
                .select_from(AuditEvent)
                .where(AuditEvent.id.in_([uuid.UUID(i) for i in ids]))
            )
            or 0
        )


async def test_every_connection_acts_as_the_role_whatever_is_rolled_back_or_reset(
    settings: Settings,
) -> None:
    _postgres_only(settings)
    async with running(settings, database_pool_size=4) as app:
        sessionmaker = app.state.sessionmaker

        async def undo_and_ask() -> str:
            async with sessionmaker() as session:
                # What undid SET ROLE before: a transaction's rollback, and resets.
                await session.execute(text("SET LOCAL ROLE NONE"))
                await session.rollback()
                await session.execute(text("RESET ROLE"))
                await session.commit()
                return str(await session.scalar(text("SELECT current_user")))

        acting = await asyncio.gather(*(undo_and_ask() for _ in range(8)))
    assert set(acting) == {APP_ROLE}


async def test_a_burst_from_an_empty_pool_has_every_answer_in_the_log(
    settings: Settings, world: World, admin_sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    """The loss found in review: each new connection's first lookups were rolled back."""
    answered: list[str] = []
    async with running(settings, database_pool_size=8) as app, http(app) as client:
        for _ in range(3):
            responses = await asyncio.gather(
                *(ask(client, world, "hospital_client", NHS["neglect"]) for _ in range(25))
            )
            assert [r.status_code for r in responses] == [200] * 25
            answered += [r.json()["lookup_id"] for r in responses]
    assert await _events(admin_sessionmaker, answered) == len(answered) == 75


async def test_a_connection_left_inside_a_transaction_is_never_used(
    settings: Settings, world: World, admin_sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    """Whatever left it so, a pooled connection inside a transaction is discarded at
    checkout: the lookup takes a fresh one, and its event is committed."""
    _postgres_only(settings)
    async with running(settings, database_pool_size=1) as app, http(app) as client:
        engine = app.state.sessionmaker.kw["bind"]
        pooled = await engine.raw_connection()
        stale_pid = await pooled.driver_connection.fetchval("SELECT pg_backend_pid()")
        await pooled.driver_connection.execute("BEGIN")
        await greenlet_spawn(pooled.close)  # back to the pool, still inside BEGIN

        response = await ask(client, world, "hospital_client", NHS["neglect"])
        assert response.status_code == 200, response.text
        assert await _events(admin_sessionmaker, [response.json()["lookup_id"]]) == 1
        async with app.state.sessionmaker() as session:
            assert await session.scalar(text("SELECT pg_backend_pid()")) != stale_pid


@asynccontextmanager
async def insert_revoked(database: DatabaseUnderTest) -> AsyncIterator[None]:
    await run_as_superuser(database.admin_url, f"REVOKE INSERT ON audit_events FROM {APP_ROLE}")
    try:
        yield
    finally:
        await run_as_superuser(database.admin_url, f"GRANT INSERT ON audit_events TO {APP_ROLE}")


async def test_with_insert_on_the_log_revoked_nothing_is_answered(
    app: FastAPI, client: httpx.AsyncClient, world: World, database: DatabaseUnderTest
) -> None:
    """The privilege separation holds: the role cannot write its event, so it answers
    nothing, whatever the login role could do."""
    _postgres_only(app.state.settings)
    async with insert_revoked(database):
        responses = await asyncio.gather(
            *(ask(client, world, "hospital_client", NHS["neglect"]) for _ in range(32))
        )
        assert {r.status_code for r in responses} == {503}
        for response in responses:
            assert response.headers["content-type"] == "application/problem+json"
            assert "status" not in response.json() or response.json()["status"] == 503
            assert "categories" not in response.json()
        assert (await client.get("/readyz")).status_code == 503
    assert (await ask(client, world, "hospital_client", NHS["neglect"])).status_code == 200
    assert (await client.get("/readyz")).status_code == 200


async def test_readiness_fails_on_a_connection_acting_as_another_role(settings: Settings) -> None:
    _postgres_only(settings)
    async with running(settings, database_pool_size=1) as app, http(app) as client:
        assert (await client.get("/readyz")).status_code == 200
        async with app.state.sessionmaker() as session:
            await session.execute(text("SET ROLE NONE"))  # a stray statement, committed
            await session.commit()
        response = await client.get("/readyz")
        assert response.status_code == 503
        assert "role" in response.json()["detail"]


def _production(settings: Settings, tmp_path: Path, **overrides: Any) -> Settings:
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "unused.pem").write_text("")  # start-up does not read token keys
    CheckpointSigner.from_file(keys / "checkpoint.pem", settings.audit_log_origin, create=True)
    values = settings.model_dump() | {
        "environment": Environment.production,
        "key_dir": keys,
        "checkpoint_key_path": keys / "checkpoint.pem",
        "sealing_enabled": False,
        "notifications_enabled": False,
    }
    return Settings(**(values | overrides))


async def test_production_refuses_to_start_as_a_role_that_can_change_the_log(
    settings: Settings, database: DatabaseUnderTest, tmp_path: Path
) -> None:
    _postgres_only(settings)
    # A superuser login acting as itself (the demo set-up, in production).
    as_superuser = _production(
        settings, tmp_path, database_url=database.admin_url, database_role="postgres"
    )
    app = create_app(as_superuser)
    with pytest.raises(WrongRole, match="can change the audit log"):
        async with app.router.lifespan_context(app):
            pass
    # The production set-up itself starts.
    app = create_app(settings.model_copy(update={"sealing_enabled": False}))
    async with app.router.lifespan_context(app):
        pass


async def test_a_login_that_may_not_act_as_the_role_keeps_the_service_from_starting(
    settings: Settings, database: DatabaseUnderTest
) -> None:
    _postgres_only(settings)
    stranger = f"cpr_stranger_{database.url.rsplit('_', 1)[-1][:8]}"
    await run_as_superuser(POSTGRES_ADMIN_URL, f"CREATE ROLE {stranger} LOGIN")
    try:
        url = database.url.replace(database.url.split("://", 1)[1].split("@", 1)[0], stranger, 1)
        app = create_app(settings.model_copy(update={"database_url": url}))
        with pytest.raises(DBAPIError, match="permission denied to set role"):
            async with app.router.lifespan_context(app):
                pass
    finally:
        await run_as_superuser(POSTGRES_ADMIN_URL, f"DROP ROLE IF EXISTS {stranger}")
