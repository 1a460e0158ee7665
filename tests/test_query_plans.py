"""The plan of the statement whose cost must not grow with the audit log (issue 18):
the sequencer's read of a batch (app/audit/sealing.py) goes through the queue's index
and fetches the events by primary key, never a scan of ``audit_events``. On PostgreSQL
it is checked with no statistics and after ANALYZE.
"""

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import event, insert, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

from app.audit.models import AuditEvent
from app.audit.sealing import seal_pending
from app.db import create_engine, create_sessionmaker
from tests.conftest import FreshDatabase

# PostgreSQL: a log of this many events, HISTORY of them by one client (and enquirer),
# spread over the past 30 days; then QUEUED recent ones waiting for the sequencer.
EVENTS = 40_000
HISTORY = 5_000
QUEUED = 600
# SQLite has no statistics unless asked: a smaller log shows its plans as well.
SQLITE_EVENTS = 3_000
BATCH = 250

_POSTGRESQL_SEED = (
    "ALTER TABLE audit_events DISABLE TRIGGER audit_events_queue",
    f"""
    INSERT INTO audit_events (id, occurred_at, event_type, principal, enquirer_id, outcome)
    SELECT gen_random_uuid(),
           now() - interval '30 days' + i * (interval '29 days' / {EVENTS}),
           'lookup',
           CASE WHEN i % {EVENTS // HISTORY} = 0 THEN 'client:long' ELSE 'client:' || i % 97 END,
           CASE WHEN i % {EVENTS // HISTORY} = 0 THEN 'E-long' ELSE 'E' || i % 20 END,
           CASE WHEN i % 5 = 0 THEN 'refer_to_custodian' ELSE 'not_on_plan' END
    FROM generate_series(1, {EVENTS}) AS i
    """,
    "ALTER TABLE audit_events ENABLE ALWAYS TRIGGER audit_events_queue",
    # Through the queue: the last ten minutes, the callers' own in the last 20 s.
    f"""
    INSERT INTO audit_events (id, occurred_at, event_type, principal, enquirer_id, outcome)
    SELECT gen_random_uuid(), now() - interval '10 minutes' + i * interval '0.9 second',
           'lookup', 'client:' || i % 97, 'E' || i % 20, 'not_on_plan'
    FROM generate_series(1, {QUEUED}) AS i
    """,
    """
    INSERT INTO audit_events (id, occurred_at, event_type, principal, enquirer_id, outcome)
    SELECT gen_random_uuid(), now() - interval '20 seconds' + i * interval '1 ms', 'lookup',
           caller, 'E-' || substr(caller, 8), 'refer_to_custodian'
    FROM generate_series(1, 3) AS i, unnest(ARRAY['client:long', 'client:fresh']) AS caller
    """,
)


def _sqlite_rows() -> Iterator[dict[str, Any]]:
    now = datetime.now(UTC).timestamp()
    for i in range(1, SQLITE_EVENTS + 1):
        long = i % 6 == 0
        yield {
            "occurred_at": datetime.fromtimestamp(now - 86_400 * 30 + i * 600, UTC)
            if i < SQLITE_EVENTS - 100
            else datetime.fromtimestamp(now - 600 + i % 100, UTC),
            "event_type": "lookup",
            "principal": "client:long" if long else f"client:{i % 97}",
            "enquirer_id": "E-long" if long else f"E{i % 20}",
            "outcome": "refer_to_custodian" if i % 5 == 0 else "not_on_plan",
        }


@pytest.fixture
async def engine(
    fresh: FreshDatabase, fresh_admin_sessionmaker: async_sessionmaker[AsyncSession]
) -> AsyncIterator[AsyncEngine]:
    """The service's own engine (its role, on PostgreSQL) over a seeded log."""
    async with fresh_admin_sessionmaker() as session:
        if fresh.settings.is_sqlite:
            await session.execute(insert(AuditEvent.__table__), list(_sqlite_rows()))
        else:
            for statement in _POSTGRESQL_SEED:
                await session.execute(text(statement))
        await session.commit()
    service = create_engine(fresh.settings)
    try:
        yield service
    finally:
        await service.dispose()


@asynccontextmanager
async def _captured(engine: AsyncEngine) -> AsyncIterator[list[tuple[str, Any]]]:
    """The SELECTs on the audit tables run meanwhile, with their parameters as sent."""
    statements: list[tuple[str, Any]] = []

    def record(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "audit_" in statement:
            statements.append((statement, parameters))

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)


async def _postgresql_plan(
    connection: AsyncConnection, statement: str, parameters: Any, *, analyze: bool = False
) -> dict[str, Any]:
    options = "ANALYZE, BUFFERS, FORMAT JSON" if analyze else "FORMAT JSON"
    raw = (
        await connection.exec_driver_sql(f"EXPLAIN ({options}) {statement}", tuple(parameters))
    ).scalar_one()
    plan: dict[str, Any] = (json.loads(raw) if isinstance(raw, str) else raw)[0]["Plan"]
    return plan


def _literal(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, datetime):
        return f"'{value.isoformat()}'"
    return "'" + str(value).replace("'", "''") + "'"


def _scans(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every node of the plan that reads a table or an index."""
    if "Relation Name" in plan or "Index Name" in plan:
        yield plan
    for child in plan.get("Plans", ()):
        yield from _scans(child)


async def _sqlite_plan(connection: AsyncConnection, statement: str, parameters: Any) -> list[str]:
    rows = await connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", tuple(parameters))
    return [row[-1] for row in rows]


async def _analyze(engine: AsyncEngine, fresh: FreshDatabase, analyze: bool) -> None:
    if not analyze:
        return
    admin = create_engine(
        fresh.settings.model_copy(update={"database_url": fresh.database.admin_url}), owner=True
    )
    try:
        async with admin.connect() as connection:
            await connection.exec_driver_sql("ANALYZE")
            await connection.commit()
    finally:
        await admin.dispose()


async def _sealing_statements(engine: AsyncEngine) -> list[tuple[str, Any]]:
    async with _captured(engine) as statements, create_sessionmaker(engine)() as session:
        sealed = await seal_pending(session, batch_size=BATCH)
        await session.rollback()
    assert sealed is not None
    assert sealed.count == BATCH
    return statements


@pytest.mark.parametrize("analyze", [False, True], ids=["no statistics", "analyzed"])
async def test_sealing_reads_the_queue_by_its_index_and_events_by_primary_key(
    engine: AsyncEngine, fresh: FreshDatabase, analyze: bool
) -> None:
    if fresh.settings.is_sqlite and analyze:
        pytest.skip("SQLite keeps no statistics unless asked")
    await _analyze(engine, fresh, analyze)
    statements = await _sealing_statements(engine)
    async with engine.connect() as connection:
        if fresh.settings.is_sqlite:
            plans = [await _sqlite_plan(connection, *statement) for statement in statements]
            lines = [line for plan in plans for line in plan]
            assert not [line for line in lines if line.startswith("SCAN audit_events")], plans
            assert [
                line
                for line in lines
                if line.startswith("SCAN audit_unsealed USING")
                and line.endswith("INDEX ix_audit_unsealed_occurred_at_event_id")
            ], plans
            assert not [line for line in lines if "TEMP B-TREE" in line], plans
            return
        scans = [
            scan
            for statement in statements
            for scan in _scans(await _postgresql_plan(connection, *statement))
        ]
    on_events = [scan for scan in scans if scan.get("Relation Name") == "audit_events"]
    assert on_events, scans
    assert all(scan.get("Index Name") == "pk_audit_events" for scan in on_events), on_events
    # audit_archives (read only while no seal is left) holds a row per archived segment,
    # a few a year: a sequential scan is its cheapest read whatever the log's size.
    assert not [
        scan
        for scan in scans
        if scan["Node Type"] == "Seq Scan" and scan.get("Relation Name") != "audit_archives"
    ], scans
