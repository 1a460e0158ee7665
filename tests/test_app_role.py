"""On PostgreSQL the service acts as cpr_app: only INSERT and SELECT on the log,
owns nothing, and cannot switch a guard off."""

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from app.audit.models import AuditEvent
from app.config import Settings
from app.main import create_app

REFUSED = [
    "UPDATE audit_events SET outcome = 'x'",
    "DELETE FROM audit_events",
    "TRUNCATE audit_events",
    "UPDATE audit_seals SET leaf_hash = 'x'",
    "DELETE FROM audit_checkpoints",
    "UPDATE register_entry_versions SET change_reason = 'x'",
    "ALTER TABLE audit_events DISABLE TRIGGER audit_events_append_only",
    "DROP TRIGGER audit_events_append_only ON audit_events",
    "SET session_replication_role = replica",
    "CREATE TABLE scratch (id int)",
]


@pytest.fixture
async def app_as_role(backend: str, fresh_settings: Settings) -> AsyncIterator[FastAPI]:
    if backend != "postgresql":
        pytest.skip("roles and privileges are PostgreSQL's; SQLite relies on its triggers")
    app = create_app(
        fresh_settings.model_copy(update={"database_role": "cpr_app", "sealing_enabled": True})
    )
    async with app.router.lifespan_context(app):
        yield app


async def test_the_service_role_can_write_and_seal_the_log(app_as_role: FastAPI) -> None:
    async with app_as_role.state.sessionmaker() as session:
        assert await session.scalar(text("SELECT current_user")) == "cpr_app"
        session.add(AuditEvent(event_type="test", outcome="ok"))
        await session.commit()
    sealed, checkpoint = await app_as_role.state.sequencer.run_once(checkpoint=True)
    assert sealed.size >= 1
    assert checkpoint is not None
    transport = httpx.ASGITransport(app=app_as_role)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        assert (await http.get("/readyz")).status_code == 200


@pytest.mark.parametrize("statement", REFUSED)
async def test_the_service_role_cannot_change_the_log_or_its_guards(
    app_as_role: FastAPI, statement: str
) -> None:
    async with app_as_role.state.sessionmaker() as session:
        with pytest.raises(DBAPIError) as refused:
            await session.execute(text(statement))
        await session.rollback()
    assert "permission denied" in str(refused.value) or "must be owner" in str(refused.value)
