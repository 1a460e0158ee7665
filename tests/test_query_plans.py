"""The plans of the statements whose cost must not grow with the audit log (issue 18):
the sequencer's read of a batch (app/audit/sealing.py) goes through the queue's index
and fetches the events by primary key, never a scan of ``audit_events``; the volume
limits' counts (app/lookup/limits.py) read the caller's window from a limit index and
nothing of its history. On PostgreSQL they are checked with no statistics and after
ANALYZE (the limits in the custom and the generic plan, with EXPLAIN ANALYZE's buffers).
"""

import json
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event, insert, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

from app.audit.alerts import AlertQuery, alert_report
from app.audit.models import AuditEvent
from app.audit.review import EnquirerRead, EnquiryListQuery, filtered, readable_enquiries
from app.audit.sealing import seal_pending
from app.auth.principals import Principal
from app.config import Environment, Settings
from app.db import create_engine, create_sessionmaker
from app.identity.models import OrganisationKind
from app.lookup.limits import limit_columns, limit_parameters
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


# --- the volume limits (app/lookup/limits.py) ------------------------------------------

# Each of client:long and client:fresh has three lookups in every limit's window (the
# fixtures' last 20 s); client:long also HISTORY before it (a day ago and older), which
# the count must not read.
IN_WINDOW = 3
LIMIT_INDEXES = {
    "ix_audit_events_lookups_principal_limit_time",
    "ix_audit_events_lookups_enquirer_id_principal_limit_time",
    "ix_audit_events_referrals_principal_limit_time",
}


async def _limit_statement(engine: AsyncEngine, principal: str, enquirer: str) -> tuple[str, Any]:
    """The three counts of the lookup's statement (limit_columns), as sent."""
    settings = Settings(environment=Environment.test)
    dialect = engine.dialect.name
    parameters = limit_parameters(
        settings, principal=principal, enquirer_id=enquirer, now=datetime.now(UTC)
    )
    async with _captured(engine) as statements, engine.connect() as connection:
        row = (await connection.execute(select(*limit_columns(dialect)), parameters)).one()
    assert all(value is None for value in row), row  # three in the window: within limits
    (statement,) = statements
    return statement


async def _generic_plan(
    connection: AsyncConnection, statement: str, parameters: Any
) -> dict[str, Any]:
    """The plan asyncpg's prepared statement comes to run: the generic one, the values
    unknown to the planner."""
    await connection.exec_driver_sql("SET plan_cache_mode = force_generic_plan")
    await connection.exec_driver_sql(f"PREPARE cpr_limits AS {statement}")
    try:
        arguments = ", ".join(_literal(value) for value in parameters)
        raw = (
            await connection.exec_driver_sql(
                f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) EXECUTE cpr_limits({arguments})"
            )
        ).scalar_one()
    finally:
        await connection.exec_driver_sql("DEALLOCATE cpr_limits")
        await connection.exec_driver_sql("RESET plan_cache_mode")
    plan: dict[str, Any] = (json.loads(raw) if isinstance(raw, str) else raw)[0]["Plan"]
    return plan


def _buffers(plan: dict[str, Any]) -> int:
    return int(plan.get("Shared Hit Blocks", 0)) + int(plan.get("Shared Read Blocks", 0))


def _assert_bounded_by_the_window(plan: dict[str, Any]) -> None:
    """Every read of audit_events goes through a limit index with the window as an
    index condition, and reads no more than the window's lookups."""
    scans = [scan for scan in _scans(plan) if scan.get("Node Type") != "Result"]
    assert scans, plan
    for scan in scans:
        assert scan.get("Index Name") in LIMIT_INDEXES, scans
        assert "(timezone('UTC'::text, occurred_at)) >=" in scan.get("Index Cond", ""), scans
        # Per loop: each count runs once. Rows the index gave (before any filter).
        read = scan["Actual Rows"] + scan.get("Rows Removed by Filter", 0)
        assert read <= IN_WINDOW, scans


@pytest.mark.parametrize("analyze", [False, True], ids=["no statistics", "analyzed"])
async def test_volume_limits_read_the_window_not_the_history(
    engine: AsyncEngine, fresh: FreshDatabase, analyze: bool
) -> None:
    if fresh.settings.is_sqlite and analyze:
        pytest.skip("SQLite keeps no statistics unless asked")
    await _analyze(engine, fresh, analyze)
    long = await _limit_statement(engine, "client:long", "E-long")
    new = await _limit_statement(engine, "client:fresh", "E-fresh")
    async with engine.connect() as connection:
        if fresh.settings.is_sqlite:
            for statement in (long, new):
                lines = await _sqlite_plan(connection, *statement)
                searches = [line for line in lines if "audit_events" in line]
                # Three counts, each a range of a limit index on the caller's key and
                # the window: SQLite's walk stops at either end of it.
                assert len(searches) == 3, lines
                for line in searches:
                    assert line.startswith("SEARCH audit_events USING"), lines
                    assert any(name in line for name in LIMIT_INDEXES), lines
                    assert "principal=?" in line, lines  # (and enquirer_id=?)
                    assert "occurred_at>?" in line, lines
            return
        plans = {
            (who, kind): await plan(connection, *statement, analyze=True)
            if kind == "custom"
            else await _generic_plan(connection, *statement)
            for who, statement in (("long", long), ("fresh", new))
            for kind, plan in (("custom", _postgresql_plan), ("generic", None))
        }
    for plan in plans.values():
        _assert_bounded_by_the_window(plan)
    # The cost is the window's, not the history's: the client with HISTORY past lookups
    # reads what the client with none reads.
    for kind in ("custom", "generic"):
        long_buffers, new_buffers = _buffers(plans["long", kind]), _buffers(plans["fresh", kind])
        assert long_buffers <= new_buffers + 3, (kind, long_buffers, new_buffers)
        assert long_buffers <= 20, (kind, long_buffers)


# --- the custodians' reads (app/audit/review.py) ----------------------------------------

AUTHORITY = uuid.UUID("00000000-0000-4000-8000-00000000000a")
OTHER = uuid.UUID("00000000-0000-4000-8000-00000000000b")
REVIEW_EVENTS = 30_000  # every third about AUTHORITY's children, the rest another's
PAGE = 100
# One event in LINKED_EVERY matched entries of both authorities: 2,000 of REVIEW_EVENTS,
# which a page must not read whole.
LINKED_EVERY = 15
# One child of AUTHORITY's asked about in one event of HOT_EVERY (1,500 of REVIEW_EVENTS),
# which a page must not read whole: its NHS number and entry are those of event 9.
HOT_EVERY = 20
HOT_NHS_NUMBER = "9000000009"
HOT_ENTRY = uuid.UUID(int=10)
REVIEW_INDEXES = {
    # The multi-authority referrals, walked by the link rows' time (migration 0016).
    "ix_audit_event_authorities_authority_id_occurred_at",
    "ix_audit_events_lookups_authority_id_index_time",
    "ix_audit_events_lookups_authority_id_enquirer_id_index_time",
    "ix_audit_events_lookups_authority_id_purpose_index_time",
}


_PRIMARY_KEYS = {"pk_audit_events", "pk_audit_event_authorities", "pk_organisations"}


def _review_rows(count: int) -> Iterator[dict[str, Any]]:
    now = datetime.now(UTC).timestamp()
    for i in range(count):
        child = 9 if i % HOT_EVERY == 9 else i % 5_000
        ours = i % 3 == 0 or child == 9
        row = {
            "id": uuid.uuid4(),
            "occurred_at": datetime.fromtimestamp(now - 86_400 * 30 + i * 80, UTC),
            "event_type": "lookup",
            "principal": f"client:{i % 97}",
            "enquirer_id": f"e{i % 20}",
            "purpose": ("unscheduled_care", "safeguarding_concern")[i % 2],
            "query": {"nhs_number": f"9{child:09d}"},
            "outcome": "on_plan",
            "authority_id": AUTHORITY if ours else OTHER,
            "entry_id": uuid.UUID(int=child + 1),
            "detail": None,
        }
        if i % LINKED_EVERY == 1:
            # Matched entries of both authorities: linked to each (migration 0006).
            matched = [
                {"entry_id": str(uuid.UUID(int=i + n)), "version": 1, "authority_id": str(a)}
                for n, a in enumerate((AUTHORITY, OTHER))
            ]
            row |= {
                "outcome": "refer_to_custodian",
                "authority_id": None,
                "entry_id": None,
                "detail": {"matched": matched},
            }
        yield row


@pytest.fixture
async def review_engine(
    fresh: FreshDatabase, fresh_admin_sessionmaker: async_sessionmaker[AsyncSession]
) -> AsyncIterator[AsyncEngine]:
    """The service's engine over a log of REVIEW_EVENTS lookups answered on plan."""
    rows = list(_review_rows(REVIEW_EVENTS if not fresh.settings.is_sqlite else 3_000))
    async with fresh_admin_sessionmaker() as session:
        for start in range(0, len(rows), 5_000):
            await session.execute(insert(AuditEvent.__table__), rows[start : start + 5_000])
        await session.commit()
    service = create_engine(fresh.settings)
    try:
        yield service
    finally:
        await service.dispose()


def _custodian() -> Principal:
    return Principal(
        kind="user",
        id="reviewer",
        display_name="reviewer",
        role=None,
        organisation_id=AUTHORITY,
        organisation_kind=OrganisationKind.local_authority,
        organisation_name="authority",
        scopes=frozenset(),
    )


_READS: dict[str, tuple[dict[str, Any], str | None]] = {
    "list": ({}, None),
    "enquirer": ({"enquirer_id": "E9"}, None),
    "purpose": ({"purpose": "safeguarding_concern"}, None),
    "one day": ({"from": "2026-01-01T00:00:00Z", "to": "2026-01-02T00:00:00Z"}, None),
    "nhs number": ({}, HOT_NHS_NUMBER),
    "entry": ({"entry_id": str(HOT_ENTRY)}, None),
}


async def _review_statement(
    engine: AsyncEngine, filters: dict[str, Any], nhs_number: str | None
) -> tuple[str, Any]:
    reviewer = _custodian()
    if "from" in filters:
        day = datetime.now(UTC) - timedelta(days=10)
        filters = {"from": day, "to": day + timedelta(days=1)}
    statement = filtered(
        readable_enquiries(reviewer), EnquiryListQuery.model_validate(filters), reviewer, nhs_number
    ).newest_first(PAGE + 1)
    async with _captured(engine) as statements, engine.connect() as connection:
        await connection.execute(statement)
    (captured,) = statements
    return captured


@pytest.mark.parametrize("read", list(_READS))
@pytest.mark.parametrize("analyze", [False, True], ids=["no statistics", "analyzed"])
async def test_custodian_reads_are_walks_of_an_index_led_by_the_authority(
    review_engine: AsyncEngine, fresh: FreshDatabase, analyze: bool, read: str
) -> None:
    """Each read walks an index led by the authority (one child's, by the NHS number's
    or the entry's own index, newest first), never the whole log nor every event of the
    authority or the child: on PostgreSQL the buffers stay within a page's worth."""
    if fresh.settings.is_sqlite and analyze:
        pytest.skip("SQLite keeps no statistics unless asked")
    await _analyze(review_engine, fresh, analyze)
    statement = await _review_statement(review_engine, *_READS[read])
    one_child = {
        "nhs number": "ix_audit_events_lookups_asked_nhs_number_index_time",
        "entry": "ix_audit_events_lookups_entry_id_index_time",
    }
    expected = (
        {
            one_child[read],
            # Whether each event found is linked to the authority (or by primary key).
            "ix_audit_event_authorities_authority_id_occurred_at",
        }
        if read in one_child
        else REVIEW_INDEXES
    )
    async with review_engine.connect() as connection:
        if fresh.settings.is_sqlite:
            lines = await _sqlite_plan(connection, *statement)
            on_events = [line for line in lines if " audit_events " in f"{line} "]
            assert on_events, lines
            assert not [line for line in on_events if line.startswith("SCAN")], lines
            assert any(name in line for line in on_events for name in expected), lines
            return
        plan = await _postgresql_plan(connection, *statement, analyze=True)
    scans = list(_scans(plan))
    assert not [
        scan
        for scan in scans
        if scan["Node Type"] == "Seq Scan" and scan["Relation Name"] == "audit_events"
    ], scans
    # Besides the primary keys (the linked half: each linked event by its id).
    used = {
        scan["Index Name"]
        for scan in scans
        if scan.get("Index Name") not in {None, *_PRIMARY_KEYS}
        and not scan["Index Name"].startswith("ix_register_entries")  # the child's entries
    }
    assert used, scans
    assert used <= expected, used
    # A page's worth from each half, the authority's own and its linked ones (each row
    # may lie on a heap page of its own, plus the index): not the authority's
    # REVIEW_EVENTS / 3 events (over 1,500 buffers), nor its REVIEW_EVENTS / LINKED_EVERY
    # linked ones, each read by primary key (over 6,000), nor the child's
    # REVIEW_EVENTS / HOT_EVERY each by primary key (about 6,000). Knowing from the
    # statistics how many events asked with the number, PostgreSQL may read them in one
    # pass (a bitmap of the index, about one buffer each) rather than walk them.
    bound = REVIEW_EVENTS // HOT_EVERY if analyze and read == "nhs number" else 2 * 3 * PAGE
    assert _buffers(plan) <= bound, (_buffers(plan), scans)


ALERTS_INDEX = "ix_audit_events_not_found_index_time"


async def _vacuum(fresh: FreshDatabase) -> None:
    """What autovacuum does for an append-only table: the visibility map, which an
    index-only scan needs to leave the heap alone (no column statistics)."""
    admin = create_engine(
        fresh.settings.model_copy(update={"database_url": fresh.database.admin_url}), owner=True
    )
    try:
        async with admin.connect() as connection:
            await connection.execution_options(isolation_level="AUTOCOMMIT")
            await connection.exec_driver_sql("VACUUM audit_events")
    finally:
        await admin.dispose()


BURST = 120  # not-found lookups by one client and enquirer of OTHER in the last hour


async def _seed_burst(fresh_admin_sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    now = datetime.now(UTC)
    rows = [
        {
            "id": uuid.uuid4(),
            "occurred_at": now - timedelta(minutes=30) + timedelta(seconds=10 * i),
            "event_type": "lookup",
            "principal": "client:burst",
            "organisation_id": OTHER,
            "enquirer": {"id": "E-burst", "name": "Dr A Jones"},
            "enquirer_id": "E-burst",
            "outcome": "not_on_plan",
        }
        for i in range(BURST)
    ]
    async with fresh_admin_sessionmaker() as session:
        await session.execute(insert(AuditEvent.__table__), rows)
        await session.commit()


async def _alert_statements(engine: AsyncEngine) -> list[tuple[str, Any]]:
    """The alert report's statements on the log, as sent."""
    settings = Settings(environment=Environment.test)
    async with _captured(engine) as statements, create_sessionmaker(engine)() as session:
        report = await alert_report(session, settings, _custodian(), AlertQuery())
        await session.rollback()
    # OTHER's: on SQLite the seed's own last minutes hold one by E-long too.
    spikes = [
        alert
        for alert in report.alerts
        if alert.kind == "not_found_spike" and alert.organisations
        if alert.organisations[0].id == OTHER
    ]
    assert [(alert.count, alert.enquirer) for alert in spikes] == [
        (BURST, EnquirerRead(id="E-burst", name="Dr A Jones"))
    ], report
    probing = [alert for alert in report.alerts if alert.kind == "client_probing"]
    assert [(alert.count, alert.principal) for alert in probing] == [(BURST, "client:burst")]
    return statements


@pytest.mark.parametrize("analyze", [False, True], ids=["no statistics", "analyzed"])
async def test_alert_scans_read_the_window_from_an_index_not_the_heap(
    engine: AsyncEngine,
    fresh: FreshDatabase,
    fresh_admin_sessionmaker: async_sessionmaker[AsyncSession],
    analyze: bool,
) -> None:
    """The alerts' national 25-hour scans of not-found lookups (the groups, the
    suspects' windows, then the events of those that reach the threshold) are
    index-only scans of the window in the alerts' index (migration 0014): nothing of
    audit_events' heap, and no statement of the report scans the whole log."""
    if fresh.settings.is_sqlite and analyze:
        pytest.skip("SQLite keeps no statistics unless asked")
    await _seed_burst(fresh_admin_sessionmaker)
    if not fresh.settings.is_sqlite:
        await _vacuum(fresh)
    await _analyze(engine, fresh, analyze)
    statements = await _alert_statements(engine)
    scans_of_not_found = [
        (statement, parameters)
        for statement, parameters in statements
        if "GROUP BY" in statement.upper() or "IN (" in statement.upper()
        if "outcome = 'not_on_plan'" in statement
    ]
    # Per kind, the groups, then which suspects reach the threshold; then the events of
    # those of both kinds.
    assert len(scans_of_not_found) == 5, statements
    async with engine.connect() as connection:
        if fresh.settings.is_sqlite:
            for statement in statements:
                lines = await _sqlite_plan(connection, *statement)
                on_events = [line for line in lines if " audit_events " in f"{line} "]
                assert not [line for line in on_events if line.startswith("SCAN")], lines
            for statement in scans_of_not_found:
                lines = await _sqlite_plan(connection, *statement)
                # The suspects' events may be read by their key's index instead.
                if "GROUP BY" in statement[0].upper():
                    assert any(ALERTS_INDEX in line for line in lines), lines
            return
        heap = (
            await connection.exec_driver_sql(
                "SELECT relpages FROM pg_class WHERE relname = 'audit_events'"
            )
        ).scalar_one()
        for statement in statements:
            plan = await _postgresql_plan(connection, *statement, analyze=True)
            scans = list(_scans(plan))
            assert not [
                scan
                for scan in scans
                if scan["Node Type"] == "Seq Scan" and scan["Relation Name"] == "audit_events"
            ], (statement, scans)
        for statement in scans_of_not_found:
            plan = await _postgresql_plan(connection, *statement, analyze=True)
            on_events = [
                scan for scan in _scans(plan) if scan.get("Relation Name") == "audit_events"
            ]
            assert on_events, plan
            grouping = "GROUP BY" in statement[0].upper()
            for scan in on_events:
                condition = scan.get("Index Cond", "") + scan.get("Recheck Cond", "")
                assert "timezone('UTC'::text, occurred_at)" in condition, on_events
                if scan["Node Type"] == "Index Only Scan":
                    assert scan["Index Name"] == ALERTS_INDEX, (statement, on_events)
                    assert scan["Heap Fetches"] == 0, (statement, on_events)
                else:
                    # The suspects' events alone, by an index led by their key (the
                    # planner's choice once it knows how few they are), never the
                    # window's: the count per group is from the index alone.
                    assert not grouping, (statement, on_events)
                    assert scan["Node Type"] in {"Index Scan", "Bitmap Heap Scan"}, on_events
                    read = scan["Actual Rows"] + scan.get("Rows Removed by Filter", 0)
                    assert read <= BURST, (statement, on_events)
            # The window's part of the index: a small part of the log's heap pages.
            assert _buffers(plan) <= heap // 5, (_buffers(plan), heap, on_events)


# Each of the alerts' other scans (migration 0016), by a phrase of its statement: the
# index it must read, whatever the statistics.
_ALERT_SCANS = {
    "refusal =": "ix_audit_events_refused_index_time",
    "'refer_to_custodian'": "ix_audit_events_authority_referrals_time",
    "entry_id IS NOT NULL": "ix_audit_events_authority_entries_time",
}


async def _seed_refusals_and_referrals(
    fresh_admin_sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    now = datetime.now(UTC)
    rows = [
        {
            "id": uuid.uuid4(),
            "occurred_at": now - timedelta(minutes=i + 1),
            "event_type": "lookup",
            "principal": "client:suspect",
            "organisation_id": OTHER,
            "enquirer_id": "E-suspect",
            "purpose": "unscheduled_care",
            "outcome": "refused" if i % 2 else "refer_to_custodian",
            "refusal": "volume_limit_enquirer" if i % 2 else None,
            "authority_id": None if i % 2 else AUTHORITY,
            "detail": None,
        }
        for i in range(20)
    ]
    async with fresh_admin_sessionmaker() as session:
        await session.execute(insert(AuditEvent.__table__), rows)
        await session.commit()


@pytest.mark.parametrize("analyze", [False, True], ids=["no statistics", "analyzed"])
async def test_each_alert_scan_reads_an_index_of_its_own(
    review_engine: AsyncEngine,
    fresh: FreshDatabase,
    fresh_admin_sessionmaker: async_sessionmaker[AsyncSession],
    analyze: bool,
) -> None:
    """The refusals, the client mismatch and the repeat presentations read their window
    from an index of their own (migration 0016), not every lookup of the window: over a
    log of REVIEW_EVENTS, whose days' window of repeat presentations holds thousands of
    the authority's lookups."""
    if fresh.settings.is_sqlite and analyze:
        pytest.skip("SQLite keeps no statistics unless asked")
    await _seed_refusals_and_referrals(fresh_admin_sessionmaker)
    await _analyze(review_engine, fresh, analyze)
    settings = Settings(environment=Environment.test)
    async with _captured(review_engine) as statements, create_sessionmaker(review_engine)() as s:
        report = await alert_report(s, settings, _custodian(), AlertQuery())
        await s.rollback()
    assert [alert.count for alert in report.alerts if alert.kind == "volume_limit_enquirer"] == [10]
    # Not the enquirer's details of each refusals' group, read by the group's own key.
    scans = [s for s in statements if not s[0].startswith("SELECT audit_events.enquirer ")]
    found = {phrase: [s for s in scans if phrase in s[0]] for phrase in _ALERT_SCANS}
    assert all(found.values()), statements
    async with review_engine.connect() as connection:
        for phrase, index in _ALERT_SCANS.items():
            for statement in found[phrase]:
                if fresh.settings.is_sqlite:
                    # SQLite may take the authority's other index, as bounded by the window.
                    lines = await _sqlite_plan(connection, *statement)
                    on_events = [line for line in lines if " audit_events " in f"{line} "]
                    assert on_events, lines
                    assert not [line for line in on_events if line.startswith("SCAN")], lines
                    continue
                plan = await _postgresql_plan(connection, *statement, analyze=True)
                on_events = [s for s in _scans(plan) if s.get("Relation Name") == "audit_events"]
                assert index in {scan.get("Index Name") for scan in _scans(plan)}, plan
                assert "Seq Scan" not in {scan["Node Type"] for scan in on_events}, plan
                # The window's few refusals and referrals; the repeat presentations' 2,900
                # entries of the days' window from the index alone (not their heap pages).
                bound = 300 if index == "ix_audit_events_authority_entries_time" else 100
                assert _buffers(plan) <= bound, (statement, _buffers(plan))


async def test_autovacuum_keeps_up_with_the_log_counted_in_events(
    fresh_admin_sessionmaker: async_sessionmaker[AsyncSession], fresh: FreshDatabase
) -> None:
    """The index-only scans above leave the heap alone only for pages vacuumed since they
    were written: the log and its link rows are vacuumed every 10,000 new rows and
    analysed every 200,000 (migration 0017), not after a share of a table that grows for
    years (20 % and 10 % by default: months apart at ten million events a year)."""
    if fresh.settings.is_sqlite:
        pytest.skip("SQLite has no autovacuum and no visibility map")
    async with fresh_admin_sessionmaker() as session:
        options = dict(
            (
                await session.execute(
                    text(
                        "SELECT relname, reloptions FROM pg_class WHERE relname IN "
                        "('audit_events', 'audit_event_authorities')"
                    )
                )
            ).all()
        )
    expected = {
        "autovacuum_vacuum_insert_threshold=10000",
        "autovacuum_vacuum_insert_scale_factor=0",
        "autovacuum_analyze_threshold=200000",
        "autovacuum_analyze_scale_factor=0",
    }
    assert {table: set(values or ()) for table, values in options.items()} == {
        "audit_events": expected,
        "audit_event_authorities": expected,
    }
