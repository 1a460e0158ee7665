"""Retention of ended register entries (`cpr register purge-ended`, docs/audit-log.md
"Retention"): entries ended more than CPR_REGISTER_ENDED_RETENTION_DAYS ago leave with
their versions, as the schema owner alone, in batches each recorded in the log; the
database's guards (migration 0015) hold for the owner and the service role. Both
databases, PostgreSQL with the production roles (tests/production.py).

Most tests have a database of their own (``fresh``); the lookups and reviews after a
purge use the session's shared world, purging only what the test ended long ago."""

import asyncio
import json
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from app.admin.service import create_organisation
from app.audit.models import AuditEvent, AuditSeal
from app.cli import main
from app.config import Settings, get_settings
from app.identity.models import Organisation, OrganisationKind
from app.main import create_app
from app.register.models import Category, RegisterEntry, RegisterEntryVersion
from app.register.retention import PURGED
from app.register.schemas import EntryCreate, Person
from app.register.service import Actor, create_entry, end_entry, record_review
from tests.conftest import DatabaseUnderTest, FreshDatabase, World
from tests.enquiries import ask, fresh_nhs, new_child
from tests.test_audit_chain import Log

DAYS = 30
TODAY = date.today()
OLD = TODAY - timedelta(days=DAYS + 70)
RECENT = TODAY - timedelta(days=DAYS - 20)
ACTOR = Actor("test:retention")


async def cpr(*arguments: str) -> Result:
    return await asyncio.to_thread(CliRunner().invoke, main, list(arguments))


def _plan(nhs: str, given: str, born: date) -> EntryCreate:
    return EntryCreate(
        child=Person(nhs_number=nhs, given_name=given, family_name="Retained", date_of_birth=born),
        categories=[Category.neglect],
        plan_start=OLD - timedelta(days=200),
    )


@dataclass
class Register:
    log: Log
    fresh: FreshDatabase
    a: Organisation
    b: Organisation
    entries: dict[str, RegisterEntry]
    nhs: dict[str, str]
    names: dict[str, str]

    def id_of(self, key: str) -> str:
        """The entry's id as a SQL literal, as the database stores it."""
        return self.log.stored(self.entries[key].id)


CHILD = TODAY - timedelta(days=3000)


def _eighteen_on(day: date) -> date:
    return day.replace(year=day.year - 18)


# key: (authority, ended on (None: never ended), born)
ENTRIES = {
    "old_a1": ("a", OLD, CHILD),
    "old_a2": ("a", OLD - timedelta(days=400), CHILD),
    "old_b": ("b", OLD, CHILD),
    # Never ended, but shown ended since the 18th birthday, that long ago.
    "adult_a": ("a", None, _eighteen_on(OLD)),
    "edge_a": ("a", TODAY - timedelta(days=DAYS), CHILD),  # exactly the period ago: kept
    "recent_a": ("a", RECENT, CHILD),
    "adult_recent_a": ("a", None, _eighteen_on(RECENT)),
    "live_a": ("a", None, CHILD),
    "referred_a": ("a", OLD, CHILD),
}
DUE = ("old_a1", "old_a2", "old_b", "adult_a")
KEPT = ("edge_a", "recent_a", "adult_recent_a", "live_a", "referred_a")


@pytest.fixture
async def register(fresh: FreshDatabase, fresh_settings: Settings) -> AsyncIterator[Register]:
    """Two authorities' entries: ended long ago, ended lately, live, and one ended long
    ago that a row of another table refers to. Each has three versions (created,
    reviewed, ended) or two (live: created, reviewed)."""
    app = create_app(fresh_settings)
    async with app.router.lifespan_context(app):
        log = Log(app, fresh_settings)
        try:
            async with log.sessionmaker() as session:
                orgs = {
                    key: create_organisation(
                        session,
                        actor="test",
                        kind=OrganisationKind.local_authority,
                        name=f"Authority {key.upper()} {secrets.token_hex(3)}",
                        ods_code=None,
                        contact_name="safeguarding",
                        contact_phone="020 7946 0101",
                    )
                    for key in ("a", "b")
                }
                await session.flush()
                entries, numbers, names = {}, {}, {}
                for key, (authority, _, born) in ENTRIES.items():
                    numbers[key] = fresh_nhs()
                    names[key] = "".join(secrets.choice("abcdefghij") for _ in range(9)).title()
                    entries[key] = create_entry(
                        session,
                        actor=ACTOR,
                        authority_id=orgs[authority].id,
                        data=_plan(numbers[key], names[key], born),
                    )
                await session.flush()
                for key, (_, ended, _) in ENTRIES.items():
                    record_review(
                        session,
                        entries[key],
                        actor=ACTOR,
                        held_on=OLD - timedelta(days=100),
                        next_review=None,
                        note=None,
                    )
                    await session.flush()
                    if ended is not None:
                        end_entry(
                            session,
                            entries[key],
                            actor=ACTOR,
                            ended_on=ended,
                            reason="no_longer_at_risk",
                        )
                        await session.flush()
                await session.commit()
            yield Register(log, fresh, orgs["a"], orgs["b"], entries, numbers, names)
        finally:
            await log.close()


@pytest.fixture
def owner_env(register: Register, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """`cpr` as the schema owner (its own login, no CPR_DATABASE_ROLE), the period set."""
    settings = register.log.settings
    monkeypatch.setenv("DATABASE_URL", register.fresh.database.owner_url)
    monkeypatch.delenv("CPR_DATABASE_ROLE", raising=False)
    monkeypatch.setenv("CPR_ENVIRONMENT", settings.environment.value)
    monkeypatch.setenv("CPR_KEY_DIR", str(settings.key_dir))
    monkeypatch.setenv("CPR_CHECKPOINT_KEY_PATH", str(settings.checkpoint_key_path))
    monkeypatch.setenv("CPR_CHECKPOINT_DIR", str(settings.checkpoint_dir))
    monkeypatch.setenv("CPR_REGISTER_ENDED_RETENTION_DAYS", str(DAYS))
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture
async def owner(register: Register) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """Sessions as the schema owner's own login (on SQLite: the file)."""
    if register.log.settings.is_sqlite:
        yield register.log.sessionmaker
        return
    engine = create_async_engine(register.fresh.database.owner_url)
    yield async_sessionmaker(engine, expire_on_commit=False)
    await engine.dispose()


async def _present(register: Register) -> dict[str, int]:
    """By key: the entry's versions still held (absent: the entry is gone)."""
    async with register.log.sessionmaker() as session:
        ids = {entry.id: key for key, entry in register.entries.items()}
        present = set(
            await session.scalars(select(RegisterEntry.id).where(RegisterEntry.id.in_(ids)))
        )
        versions = dict(
            (
                await session.execute(
                    select(RegisterEntryVersion.entry_id, func.count())
                    .where(RegisterEntryVersion.entry_id.in_(ids))
                    .group_by(RegisterEntryVersion.entry_id)
                )
            ).all()
        )
    for entry_id in set(versions) - present:
        raise AssertionError(f"versions of {ids[entry_id]} outlived it")
    return {ids[entry_id]: versions.get(entry_id, 0) for entry_id in present}


EVERYTHING = {key: 2 if ended is None else 3 for key, (_, ended, _) in ENTRIES.items()}


async def _purged_events(register: Register) -> list[AuditEvent]:
    async with register.log.sessionmaker() as session:
        return list(
            await session.scalars(
                select(AuditEvent).where(AuditEvent.event_type == PURGED).order_by(AuditEvent.id)
            )
        )


async def _refer_to(register: Register, owner: async_sessionmaker[AsyncSession]) -> None:
    """A table of the schema's (made by its owner) that refers to one ended entry."""
    kind = "CHAR(32)" if register.log.settings.is_sqlite else "uuid"
    async with owner() as session:
        await session.execute(
            text(
                f"CREATE TABLE test_referrals (id integer PRIMARY KEY, "
                f"entry_id {kind} NOT NULL REFERENCES register_entries (id))"
            )
        )
        referred = register.id_of("referred_a")
        await session.execute(
            text(f"INSERT INTO test_referrals (id, entry_id) VALUES (1, {referred})")
        )
        await session.commit()


# --- what is deleted, and what is not ---------------------------------------------------


@pytest.mark.usefixtures("owner_env")
async def test_nothing_is_deleted_without_a_retention_period(
    register: Register, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CPR_REGISTER_ENDED_RETENTION_DAYS")
    get_settings.cache_clear()
    for arguments in ((), ("--dry-run",)):
        result = await cpr("register", "purge-ended", *arguments)
        assert result.exit_code == 0, result.output
        assert "nothing deleted: no retention period is set" in result.output
    assert await _present(register) == EVERYTHING
    assert await _purged_events(register) == []


def test_the_period_must_be_a_positive_number_of_days() -> None:
    for wrong in (0, -1):
        with pytest.raises(ValueError, match="greater than 0"):
            Settings(register_ended_retention_days=wrong)
    assert Settings().register_ended_retention_days is None


@pytest.mark.usefixtures("owner_env")
async def test_the_service_role_deletes_nothing(
    register: Register, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", register.log.settings.database_url)
    monkeypatch.setenv("CPR_DATABASE_ROLE", "cpr_app")
    get_settings.cache_clear()
    result = await cpr("register", "purge-ended")
    assert result.exit_code == 3, result.output
    assert "nothing deleted: the command acts as the role cpr_app" in result.output
    assert await _present(register) == EVERYTHING


@pytest.mark.usefixtures("owner_env")
async def test_ended_entries_past_the_period_go_with_their_versions_in_recorded_batches(
    register: Register, owner: async_sessionmaker[AsyncSession]
) -> None:
    await _refer_to(register, owner)

    dry = await cpr("register", "purge-ended", "--dry-run")
    assert dry.exit_code == 0, dry.output
    cut = (TODAY - timedelta(days=DAYS)).isoformat()
    assert f"entries that ended before {cut} (more than {DAYS} days ago):" in dry.output
    assert f"{register.a.name} ({register.a.id}): would delete 3 entries" in dry.output
    assert f"{register.b.name} ({register.b.id}): would delete 1 entry" in dry.output
    assert (
        f"{register.a.name} ({register.a.id}): keeping 1 entry that other rows still refer "
        "to (test_referrals.entry_id)"
    ) in dry.output
    assert "dry run: nothing deleted" in dry.output
    assert await _present(register) == EVERYTHING
    assert await _purged_events(register) == []

    result = await cpr("register", "purge-ended", "--batch-size", "1")
    assert result.exit_code == 0, result.output
    assert "deleted 4 entries with 11 versions" in result.output
    assert "keeping 1 entry that other rows still refer to" in result.output
    assert await _present(register) == {key: EVERYTHING[key] for key in KEPT}

    # One event per batch (here one entry each), in the transaction that deleted it.
    events = await _purged_events(register)
    assert len(events) == 4
    recorded = {}
    keys = {str(register.entries[key].id): key for key in DUE}
    for event in events:
        assert (event.principal, event.outcome) == ("cli:register-purge-ended", "ok")
        detail = event.detail or {}
        assert detail["retention_days"] == DAYS
        assert detail["ended_before"] == cut
        [entry_id] = detail["entry_ids"]
        assert (detail["entries"], detail["versions"]) == (1, EVERYTHING[keys[entry_id]])
        recorded[entry_id] = event.authority_id
        said = json.dumps(detail)
        for key in ENTRIES:  # never a child's NHS number or names
            assert register.nhs[key] not in said
            assert register.names[key] not in said
    assert recorded == {
        str(register.entries[key].id): register.entries[key].authority_id for key in DUE
    }

    # Sealed into the chain as any other event; the chain still verifies.
    await register.log.sequencer.run_once(checkpoint=True)
    async with register.log.sessionmaker() as session:
        sealed = set(
            await session.scalars(
                select(AuditSeal.event_id).where(AuditSeal.event_id.in_([e.id for e in events]))
            )
        )
    assert sealed == {event.id for event in events}
    report = await register.log.verify()
    assert report.ok, report.findings

    again = await cpr("register", "purge-ended")
    assert again.exit_code == 0, again.output
    assert "nothing deleted: no entry is due" in again.output
    assert "keeping 1 entry" in again.output
    assert len(await _purged_events(register)) == 4


@pytest.mark.usefixtures("owner_env")
async def test_cpr_audit_verify_verifies_the_chain_after_a_purge(
    register: Register, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = await cpr("register", "purge-ended")
    assert result.exit_code == 0, result.output
    assert "deleted 5 entries with 14 versions" in result.output  # nothing refers to any
    await register.log.sequencer.run_once(checkpoint=True)
    monkeypatch.setenv("DATABASE_URL", register.log.settings.database_url)
    if register.log.settings.database_role is not None:
        monkeypatch.setenv("CPR_DATABASE_ROLE", register.log.settings.database_role)
    get_settings.cache_clear()
    verified = await cpr("audit", "verify")
    assert verified.exit_code == 0, verified.output
    assert "OK: every event, hash and checkpoint" in verified.output


# --- the database's guards ----------------------------------------------------------------


async def _refused(
    sessionmaker: async_sessionmaker[AsyncSession], *statements: str, sqlite: bool
) -> str:
    """The statements in one transaction, the owner's deferral of foreign keys first on
    SQLite as the purge does; refused at a statement or at the commit."""

    async def attempt(session: AsyncSession) -> None:
        if sqlite:
            await session.execute(text("PRAGMA defer_foreign_keys = ON"))
        for statement in statements:
            await session.execute(text(statement))
        await session.commit()

    async with sessionmaker() as session:
        try:
            with pytest.raises(DBAPIError) as refused:
                await attempt(session)
        finally:
            await session.rollback()
    return str(refused.value)


async def test_the_owner_cannot_delete_a_live_plan_nor_versions_apart_from_their_entry(
    register: Register, owner: async_sessionmaker[AsyncSession]
) -> None:
    sqlite = register.log.settings.is_sqlite
    live, old = register.id_of("live_a"), register.id_of("old_a1")
    error = await _refused(
        owner,
        f"DELETE FROM register_entry_versions WHERE entry_id = {live}",
        f"DELETE FROM register_entries WHERE id = {live}",
        sqlite=sqlite,
    )
    assert "append-only" in error
    # The versions' guard was met first: the entry's own, on its own.
    error = await _refused(owner, f"DELETE FROM register_entries WHERE id = {live}", sqlite=sqlite)
    assert "a live plan is never deleted" in error
    # An ended entry's versions without the entry, or the entry without its versions.
    error = await _refused(
        owner, f"DELETE FROM register_entry_versions WHERE entry_id = {old}", sqlite=sqlite
    )
    assert "append-only" in error
    error = await _refused(owner, f"DELETE FROM register_entries WHERE id = {old}", sqlite=False)
    assert "FOREIGN KEY" in error or "foreign key" in error
    assert await _present(register) == EVERYTHING


async def test_the_guards_hold_under_replication_role_replica(register: Register) -> None:
    if register.log.settings.is_sqlite:
        pytest.skip("session_replication_role is PostgreSQL's")
    live = register.id_of("live_a")
    for statement in (
        f"DELETE FROM register_entries WHERE id = {live}",
        f"DELETE FROM register_entry_versions WHERE entry_id = {live}",
        "TRUNCATE register_entries CASCADE",
    ):
        error = await _refused(
            register.log.admin,  # a superuser
            "SET LOCAL session_replication_role = replica",
            statement,
            sqlite=False,
        )
        assert "never" in error or "append-only" in error
    assert await _present(register) == EVERYTHING


async def test_the_service_role_cannot_delete_entries_or_versions(register: Register) -> None:
    if register.log.settings.is_sqlite:
        pytest.skip("roles are PostgreSQL's; on SQLite the file's owner is the service")
    old = register.id_of("old_a1")
    async with register.log.sessionmaker() as session:
        assert await session.scalar(text("SELECT current_user")) == "cpr_app"
        for table in ("register_entries", "register_entry_versions"):
            for privilege in ("DELETE", "TRUNCATE"):
                assert not await session.scalar(
                    text(f"SELECT has_table_privilege('cpr_app', '{table}', '{privilege}')")
                )
    for statement in (
        f"DELETE FROM register_entry_versions WHERE entry_id = {old}",
        f"DELETE FROM register_entries WHERE id = {old}",
        "TRUNCATE register_entries CASCADE",
    ):
        error = await _refused(register.log.sessionmaker, statement, sqlite=False)
        assert "permission denied" in error
    assert await _present(register) == EVERYTHING


async def test_migration_0015_downgrades_and_upgrades_again(register: Register) -> None:
    from alembic import command
    from alembic.config import Config

    from app.cli import ROOT

    settings = register.log.settings.model_copy(
        update={"database_url": register.fresh.database.owner_url}
    )
    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(ROOT / "migrations"))
    config.attributes["settings"] = settings
    await asyncio.to_thread(command.downgrade, config, "0014")
    await asyncio.to_thread(command.upgrade, config, "head")
    live = register.id_of("live_a")
    error = await _refused(
        register.log.admin, f"DELETE FROM register_entries WHERE id = {live}", sqlite=False
    )
    assert "a live plan is never deleted" in error


# --- after a purge: lookups and reviews (the shared world) ----------------------------------


@pytest.fixture
def shared_owner_env(
    database: DatabaseUnderTest, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    monkeypatch.setenv("DATABASE_URL", database.owner_url)
    monkeypatch.delenv("CPR_DATABASE_ROLE", raising=False)
    monkeypatch.setenv("CPR_ENVIRONMENT", settings.environment.value)
    # Longer than any other test ends a plan ago: only this test's entry is due.
    monkeypatch.setenv("CPR_REGISTER_ENDED_RETENTION_DAYS", "3650")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def _answer(response: httpx.Response) -> dict[str, Any]:
    """The lookup's answer without what differs from one lookup to the next."""
    assert response.status_code == 200, response.text
    return {k: v for k, v in response.json().items() if k not in {"lookup_id", "id"}}


@pytest.mark.usefixtures("shared_owner_env")
async def test_after_a_purge_lookups_answer_as_for_an_ended_plan_and_reviews_still_read(
    app: Any,
    client: httpx.AsyncClient,
    world: World,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    entry, nhs = await new_child(sessionmaker, world.orgs["authority_a"])
    disclosed = await ask(client, world, "police_client", nhs)
    assert disclosed.status_code == 200, disclosed.text
    async with sessionmaker() as session:
        found = await session.get_one(RegisterEntry, entry.id)
        end_entry(
            session,
            found,
            actor=ACTOR,
            ended_on=TODAY - timedelta(days=3651),
            reason="no_longer_at_risk",
        )
        await session.commit()
    ended = _answer(await ask(client, world, "police_client", nhs))

    result = await cpr("register", "purge-ended")
    assert result.exit_code == 0, result.output
    assert "deleted 1 entry with 2 versions" in result.output
    async with sessionmaker() as session:
        assert await session.get(RegisterEntry, entry.id) is None

    assert _answer(await ask(client, world, "police_client", nhs)) == ended

    # The custodian still reads the enquiries that named the entry; only the entry's own
    # page is gone (not found, as for any entry not in the register).
    custodian = world["custodian_a"].headers
    named = await client.get(
        "/v1/audit/events", params={"entry_id": str(entry.id)}, headers=custodian
    )
    assert named.status_code == 200, named.text
    assert named.json()["items"], named.text
    assert {item["entry_id"] for item in named.json()["items"]} == {str(entry.id)}
    listed = await client.get("/v1/audit/events", headers=custodian)
    assert listed.status_code == 200, listed.text
    searched = await client.post(
        "/v1/audit/events/search", json={"nhs_number": nhs}, headers=custodian
    )
    assert searched.status_code == 200, searched.text
    for path in (f"/v1/audit/entries/{entry.id}/enquiries", f"/v1/register/entries/{entry.id}"):
        gone = await client.get(path, headers=custodian)
        assert gone.status_code == 404, (path, gone.text)
    for path in ("/v1/notifications", "/v1/audit/alerts"):
        response = await client.get(path, headers=custodian)
        assert response.status_code == 200, (path, response.text)

    # And the custodian's pages.
    transport = httpx.ASGITransport(app=app, client=("203.0.113.31", 50031))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as browser:
        await _sign_in_web(browser, world)
        for path, params in (
            ("/web/enquiries", {"entry": str(entry.id)}),
            ("/web/enquiries", {}),
            ("/web/alerts", {}),
            ("/web/notifications", {}),
        ):
            page = await browser.get(path, params=params)
            assert page.status_code == 200, (path, page.text[:500])


async def _sign_in_web(browser: httpx.AsyncClient, world: World) -> None:
    from tests.test_web_custodian import _sign_in

    await _sign_in(browser, world, "custodian_a")
