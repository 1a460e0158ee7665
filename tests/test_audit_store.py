"""The audit store refuses changes and the service fails closed without it
(README, "The audit log").

The guards are tried as a superuser (on SQLite, the file's owner): they must hold
even for one. What the service's own role may do is tests/test_app_role.py's.

Tampering statements run in a transaction that is never committed: should a
guard be missing, the test fails and the shared database is left untouched.
The insert-refusing trigger used for the fail-closed tests is always dropped.
"""

import uuid

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.audit.models import AuditEvent
from app.config import Settings
from tests.conftest import NHS, World
from tests.faults import audit_log_unwritable

APPEND_ONLY = {
    # table: an UPDATE that would rewrite history, and how to spot its work
    "audit_events": (
        "UPDATE audit_events SET outcome = 'tampered', refusal = NULL",
        "outcome = 'tampered'",
    ),
    "register_entry_versions": (
        "UPDATE register_entry_versions SET changed_by = 'tampered'",
        "changed_by = 'tampered'",
    ),
}


def _postgres_only(settings: Settings) -> None:
    if settings.is_sqlite:
        pytest.skip("PostgreSQL only")


async def _count(
    sessionmaker: async_sessionmaker[AsyncSession], table: str, where: str = "1 = 1"
) -> int:
    async with sessionmaker() as session:
        statement = text(f"SELECT count(*) FROM {table} WHERE {where}")
        return (await session.execute(statement)).scalar_one()


async def _refused(sessionmaker: async_sessionmaker[AsyncSession], *statements: str) -> DBAPIError:
    """Run the statements in one transaction, expect the last to be refused, never commit.

    TRUNCATE ... CASCADE locks the log's tables one by one while the service's own
    sequencer seals: PostgreSQL may end either as a deadlock's victim, which is no
    answer about the guard, so the attempt is made again.
    """
    for _ in range(5):
        async with sessionmaker() as session:
            try:
                for statement in statements[:-1]:
                    await session.execute(text(statement))
                with pytest.raises(DBAPIError) as refused:
                    await session.execute(text(statements[-1]))
            finally:
                await session.rollback()
        if "deadlock detected" not in str(refused.value):
            break
    return refused.value


@pytest.mark.parametrize("table", sorted(APPEND_ONLY))
async def test_update_is_refused_by_the_database(
    world: World, admin_sessionmaker: async_sessionmaker[AsyncSession], table: str
) -> None:
    sessionmaker = admin_sessionmaker
    before = await _count(sessionmaker, table)
    assert before > 0, "nothing to tamper with: the test would prove nothing"
    update, tampered = APPEND_ONLY[table]
    error = await _refused(sessionmaker, update)
    assert "append-only" in str(error)
    assert await _count(sessionmaker, table, tampered) == 0


@pytest.mark.parametrize("table", sorted(APPEND_ONLY))
async def test_delete_is_refused_by_the_database(
    world: World, admin_sessionmaker: async_sessionmaker[AsyncSession], table: str
) -> None:
    sessionmaker = admin_sessionmaker
    before = await _count(sessionmaker, table)
    assert before > 0
    error = await _refused(sessionmaker, f"DELETE FROM {table}")
    assert "append-only" in str(error)
    assert await _count(sessionmaker, table) >= before


async def test_a_single_targeted_update_is_refused_too(
    world: World, admin_sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    """Not only bulk statements: rewriting one lookup's outcome is refused."""
    sessionmaker = admin_sessionmaker
    async with sessionmaker() as session:
        event_id = (await session.execute(text("SELECT id FROM audit_events LIMIT 1"))).scalar_one()
    async with sessionmaker() as session:
        try:
            with pytest.raises(DBAPIError, match="append-only"):
                await session.execute(
                    text("UPDATE audit_events SET outcome = 'not_on_plan' WHERE id = :id"),
                    {"id": event_id},
                )
        finally:
            await session.rollback()


# --- PostgreSQL: TRUNCATE, replication role, privileges -------------------------------------


@pytest.mark.parametrize(
    "statement",
    [
        "TRUNCATE audit_events CASCADE",
        "TRUNCATE register_entry_versions",
        "TRUNCATE audit_seals",
        "TRUNCATE audit_checkpoints",
    ],
)
async def test_truncate_is_refused_on_postgresql(
    world: World,
    settings: Settings,
    admin_sessionmaker: async_sessionmaker[AsyncSession],
    statement: str,
) -> None:
    _postgres_only(settings)
    sessionmaker = admin_sessionmaker
    error = await _refused(sessionmaker, statement)
    assert "append-only" in str(error)


async def test_plain_truncate_of_the_log_is_refused_on_postgresql(
    world: World, settings: Settings, admin_sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    """Refused before the trigger is reached (audit_seals references the log), which is
    why the CASCADE form above exists: it gets past that and meets the guard."""
    sessionmaker = admin_sessionmaker
    _postgres_only(settings)
    before = await _count(sessionmaker, "audit_events")
    await _refused(sessionmaker, "TRUNCATE audit_events")
    assert await _count(sessionmaker, "audit_events") >= before


@pytest.mark.parametrize(
    "statement",
    [
        APPEND_ONLY["audit_events"][0],
        APPEND_ONLY["register_entry_versions"][0],
        "DELETE FROM audit_events",
        "DELETE FROM register_entry_versions",
        "TRUNCATE audit_events CASCADE",
        "TRUNCATE register_entry_versions",
    ],
)
async def test_replication_role_replica_does_not_switch_the_guards_off(
    world: World,
    settings: Settings,
    admin_sessionmaker: async_sessionmaker[AsyncSession],
    statement: str,
) -> None:
    """Ordinary triggers do not fire under session_replication_role = replica (which
    only a superuser may set); the guards are ENABLE ALWAYS, so they still do."""
    _postgres_only(settings)
    error = await _refused(
        admin_sessionmaker, "SET LOCAL session_replication_role = replica", statement
    )
    assert "append-only" in str(error)


@pytest.mark.parametrize("table", ["audit_events", "register_entry_versions"])
async def test_the_application_role_may_only_insert_and_read_the_log(
    world: World, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession], table: str
) -> None:
    _postgres_only(settings)
    async with sessionmaker() as session:
        privileges = {
            privilege: (
                await session.execute(
                    text("SELECT has_table_privilege('cpr_app', :table, :privilege)"),
                    {"table": table, "privilege": privilege},
                )
            ).scalar_one()
            for privilege in ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE")
        }
    assert privileges == {
        "SELECT": True,
        "INSERT": True,
        "UPDATE": False,
        "DELETE": False,
        "TRUNCATE": False,
    }


# --- fail closed ----------------------------------------------------------------------------


def _on_plan_lookup() -> dict[str, object]:
    return {
        "subject": {"nhs_number": NHS["neglect"]},
        "purpose": "unscheduled_care",
        "reason": "attended ED with unexplained bruising",
        "enquirer": {"id": f"F-{uuid.uuid4().hex[:10]}", "name": "Dr A Jones", "role": "registrar"},
    }


async def test_lookup_fails_closed_when_the_audit_log_cannot_be_written(
    client: httpx.AsyncClient,
    world: World,
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    admin_sessionmaker: async_sessionmaker[AsyncSession],
    capfd: pytest.CaptureFixture[str],
) -> None:
    headers = world["hospital_client"].headers
    answered = await client.post("/v1/lookups", json=_on_plan_lookup(), headers=headers)
    assert answered.status_code == 200
    assert answered.json()["status"] == "on_plan"  # what the attacker hopes to see

    capfd.readouterr()
    async with audit_log_unwritable(admin_sessionmaker, settings):
        response = await client.post("/v1/lookups", json=_on_plan_lookup(), headers=headers)
    out, err = capfd.readouterr()

    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert int(response.headers["retry-after"]) > 0
    body = response.json()
    # The problem document's own "status" is the HTTP status, never a lookup status.
    assert body["status"] == 503
    assert "categories" not in body
    assert set(body) <= {"type", "title", "status", "code", "detail", "instance"}
    assert body["code"] == "service_unavailable"
    for marker in ("on_plan", "neglect", "unborn", "lookup_id", "contact", NHS["neglect"]):
        assert marker not in response.text
    async with sessionmaker() as session:
        written = await session.execute(
            text("SELECT count(*) FROM audit_events WHERE request_id = :rid"),
            {"rid": response.headers["x-request-id"]},
        )
        assert written.scalar_one() == 0
    # The failure is logged, without the child's identifiers.
    assert "audit_write_failed" in out + err
    assert NHS["neglect"] not in out + err


async def test_the_service_answers_again_once_the_log_is_writable(
    client: httpx.AsyncClient,
    world: World,
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    admin_sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    async with audit_log_unwritable(admin_sessionmaker, settings):
        pass
    response = await client.post(
        "/v1/lookups", json=_on_plan_lookup(), headers=world["hospital_client"].headers
    )
    assert response.status_code == 200
    async with sessionmaker() as session:
        assert await session.get(AuditEvent, uuid.UUID(response.json()["lookup_id"])) is not None


async def test_readyz_reports_an_unwritable_audit_log(
    client: httpx.AsyncClient,
    settings: Settings,
    admin_sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    assert (await client.get("/readyz")).status_code == 200
    async with audit_log_unwritable(admin_sessionmaker, settings):
        not_ready = await client.get("/readyz")
    assert not_ready.status_code == 503
    assert not_ready.headers["content-type"] == "application/problem+json"
    assert (await client.get("/readyz")).status_code == 200


# --- the sealing queue (migration 0008) -----------------------------------------------------


async def test_the_application_role_may_only_read_the_sealing_queue(
    world: World, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    """Queued by a trigger, taken off by the trigger on sealing: cpr_app writes neither."""
    _postgres_only(settings)
    async with sessionmaker() as session:
        privileges = {
            privilege: (
                await session.execute(
                    text("SELECT has_table_privilege('cpr_app', 'audit_unsealed', :privilege)"),
                    {"privilege": privilege},
                )
            ).scalar_one()
            for privilege in ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE")
        }
    assert privileges == {
        "SELECT": True,
        "INSERT": False,
        "UPDATE": False,
        "DELETE": False,
        "TRUNCATE": False,
    }


async def test_the_sealing_queue_triggers_fire_always(
    world: World, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    """ENABLE ALWAYS: session_replication_role = replica switches none of them off."""
    _postgres_only(settings)
    async with sessionmaker() as session:
        rows = await session.execute(
            text(
                "SELECT tgname, tgenabled::text AS tgenabled FROM pg_trigger "
                "WHERE NOT tgisinternal AND tgrelid IN ('audit_unsealed'::regclass, "
                "'audit_seals'::regclass, 'audit_events'::regclass)"
            )
        )
        enabled = {row.tgname: row.tgenabled for row in rows}
    for trigger in (
        "audit_events_queue",
        "audit_seals_dequeue",
        "audit_unsealed_only_sealed_leave",
        "audit_unsealed_append_only",
        "audit_unsealed_no_truncate",
    ):
        assert enabled.get(trigger) == "A", trigger


def test_the_typed_event_row_names_every_column_of_the_log_with_its_type() -> None:
    """EventRow (the hot path's typed event) is the table: a column added to one and not
    the other, or typed differently, would be written as NULL or refused."""
    import typing

    from app.audit.service import EventRow

    hints = typing.get_type_hints(EventRow)
    columns = {column.key: column for column in AuditEvent.__table__.columns}
    assert set(hints) == set(columns)
    for name, column in columns.items():
        allowed = {typing.get_origin(hint) or hint for hint in typing.get_args(hints[name])}
        allowed = allowed or {hints[name]}
        kind = getattr(column.type, "impl", column.type).python_type  # a TypeDecorator's own
        kind = dict if kind is object else kind  # the JSON columns (the app's JSON type)
        assert kind in allowed, name
        assert (type(None) in allowed) == (column.nullable or name == "occurred_at"), name
