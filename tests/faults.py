"""Faults made for real in the test database, shared by the tests that need them."""

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings

REFUSE_INSERT = "cpr_test_refuse_audit_insert"


@asynccontextmanager
async def audit_log_unwritable(
    sessionmaker: async_sessionmaker[AsyncSession], settings: Settings
) -> AsyncIterator[None]:
    """Make every INSERT into audit_events fail, for real, in the database.

    ``sessionmaker`` must be allowed to create triggers on the log: the
    ``admin_sessionmaker`` fixture, not the service's (on PostgreSQL it is ``cpr_app``).

    Committed before the caller goes on (on SQLite the app's writes BEGIN
    IMMEDIATE and would wait for an open DDL transaction); always dropped.
    """
    # A fresh name each time: a pooled SQLite connection may still hold the schema
    # from before the last drop, and would refuse to create the same name again.
    name = f"{REFUSE_INSERT}_{secrets.token_hex(4)}"
    if settings.is_sqlite:
        create = [
            f"CREATE TRIGGER {name} BEFORE INSERT ON audit_events "
            "BEGIN SELECT RAISE(ABORT, 'audit log unwritable (test)'); END"
        ]
        drop = [f"DROP TRIGGER IF EXISTS {name}"]
    else:
        create = [
            f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ "
            "BEGIN RAISE EXCEPTION 'audit log unwritable (test)'; END $$",
            f"CREATE TRIGGER {name} BEFORE INSERT ON audit_events "
            f"FOR EACH ROW EXECUTE FUNCTION {name}()",
        ]
        drop = [
            f"DROP TRIGGER IF EXISTS {name} ON audit_events",
            f"DROP FUNCTION IF EXISTS {name}()",
        ]
    try:
        async with sessionmaker() as session:
            for statement in create:
                await session.execute(text(statement))
            await session.commit()
        yield
    finally:
        async with sessionmaker() as session:
            for statement in drop:
                await session.execute(text(statement))
            await session.commit()
