"""The log proves it has not been changed: tamper with the database directly, in
every way, as the file owner / superuser, and the verifier names the event."""

import asyncio
import secrets
import shutil
import threading
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from fastapi import FastAPI
from sqlalchemy import func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from app.admin.service import create_organisation, create_user
from app.audit import sealing
from app.audit.chain import Checkpoint, CheckpointSigner, CheckpointVerifier
from app.audit.models import AuditEvent, AuditSeal
from app.audit.sealing import SEAL_LOCK_KEY, SealingBusy, Sequencer
from app.audit.verify import Report, verify_log
from app.auth.keys import ensure_signing_key
from app.cli import main
from app.config import Settings, get_settings
from app.identity.models import OrganisationKind, UserRole
from app.main import create_app
from tests.conftest import POSTGRES_ADMIN_URL, World

DELAY = timedelta(seconds=30)


GUARDED = ("audit_events", "audit_seals", "audit_checkpoints", "audit_unsealed")


def admin_url(settings: Settings) -> str:
    """A superuser's URL for the test's database (on SQLite: the file, its owner's)."""
    if settings.is_sqlite:
        return settings.database_url
    name = make_url(settings.database_url).database
    return make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)


class Log:
    """A fresh database with its own log, its sequencer driven by the test."""

    def __init__(self, app: FastAPI, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.sessionmaker: async_sessionmaker[AsyncSession] = app.state.sessionmaker
        self.signer = CheckpointSigner.from_file(
            settings.checkpoint_key_path, settings.audit_log_origin, create=True
        )
        self.sequencer = Sequencer(self.sessionmaker, self.signer, settings)
        self.ids: list[uuid.UUID] = []
        # Tampering goes through a superuser's connection of its own, never the app's
        # (which may act as cpr_app). On SQLite the file's owner is the app.
        self._admin_engine = (
            None if settings.is_sqlite else create_async_engine(admin_url(settings))
        )
        self.admin = (
            self.sessionmaker
            if self._admin_engine is None
            else async_sessionmaker(self._admin_engine, expire_on_commit=False)
        )

    async def close(self) -> None:
        if self._admin_engine is not None:
            await self._admin_engine.dispose()

    async def write(self, count: int, *, occurred_at: datetime | None = None) -> None:
        async with self.sessionmaker() as session:
            for n in range(count):
                event = AuditEvent(
                    id=uuid.uuid4(),
                    event_type="lookup",
                    outcome="not_on_plan",
                    principal="client:test",
                    reason=f"enquiry {n}",
                    query={"nhs_number": "9990000018"},
                )
                if occurred_at is not None:
                    event.occurred_at = occurred_at
                session.add(event)
                self.ids.append(event.id)
            await session.commit()

    async def verify(
        self,
        held: list[str] = (),
        *,
        delay: timedelta = DELAY,  # type: ignore[assignment]
    ) -> Report:
        async with self.sessionmaker() as session:
            return await verify_log(
                session, self.signer.verifier, sealing_delay=delay, held_checkpoints=held
            )

    def stored(self, event_id: uuid.UUID) -> str:
        """An event id as a SQL literal, as the database stores it."""
        return f"'{event_id.hex}'" if self.settings.is_sqlite else f"'{event_id}'"

    async def superuser(self, *statements: str) -> None:
        """Change the store as its owner would: guards off, change, guards back on."""
        async with self.admin() as session:
            sqlite = (await session.connection()).dialect.name == "sqlite"
            for table in GUARDED:
                if sqlite:
                    await session.execute(text(f"DROP TRIGGER IF EXISTS {table}_no_update"))
                    await session.execute(text(f"DROP TRIGGER IF EXISTS {table}_no_delete"))
                else:
                    await session.execute(text(f"ALTER TABLE {table} DISABLE TRIGGER USER"))
            if sqlite:
                await session.execute(text("PRAGMA defer_foreign_keys = ON"))
            for statement in statements:
                await session.execute(text(statement))
            if not sqlite:
                for table in GUARDED:
                    await session.execute(text(f"ALTER TABLE {table} ENABLE TRIGGER USER"))
            await session.commit()

    async def load_positions(self) -> None:
        """``ids[n - 1]`` is the event sealed at position n."""
        async with self.sessionmaker() as session:
            self.ids = list(
                await session.scalars(select(AuditSeal.event_id).order_by(AuditSeal.position))
            )

    def uid(self, n: int) -> str:
        """Event n (1-based position) as the database stores its id."""
        value = self.ids[n - 1]
        return f"'{value.hex}'" if self.settings.is_sqlite else f"'{value}'"


@pytest.fixture
async def log(fresh_settings: Settings) -> AsyncIterator[Log]:
    app = create_app(fresh_settings)
    async with app.router.lifespan_context(app):
        sealed = Log(app, fresh_settings)
        try:
            await sealed.write(6)
            await sealed.sequencer.run_once(checkpoint=True)
            await sealed.load_positions()
            yield sealed
        finally:
            await sealed.close()


async def test_an_untouched_log_verifies(log: Log) -> None:
    report = await log.verify()
    assert report.ok, report.findings
    assert report.size == 6
    assert report.checkpoints_checked == 1


async def test_positions_are_gap_free_and_seals_follow_writes(log: Log) -> None:
    await log.write(3)
    sealed, checkpoint = await log.sequencer.run_once(checkpoint=True)
    assert (sealed.count, sealed.size) == (3, 9)
    assert checkpoint is not None
    assert checkpoint.size == 9
    assert (log.settings.checkpoint_dir / "latest.txt").read_text() == checkpoint.note
    assert (await log.verify()).ok


async def test_a_changed_field_is_named(log: Log) -> None:
    await log.superuser(f"UPDATE audit_events SET outcome = 'on_plan' WHERE id = {log.uid(3)}")
    finding = (await log.verify()).findings[0]
    assert (finding.kind, finding.position, finding.event_id) == ("altered", 3, str(log.ids[2]))


async def test_a_deleted_event_is_named(log: Log) -> None:
    await log.superuser(
        f"DELETE FROM audit_seals WHERE position = 4",  # noqa: F541
        f"DELETE FROM audit_events WHERE id = {log.uid(4)}",
    )
    finding = (await log.verify()).findings[0]
    assert (finding.kind, finding.position) == ("removed", 4)


async def test_two_swapped_events_are_named(log: Log) -> None:
    await log.superuser(
        f"UPDATE audit_events SET reason = 'enquiry 4' WHERE id = {log.uid(2)}",
        f"UPDATE audit_events SET reason = 'enquiry 1' WHERE id = {log.uid(5)}",
    )
    finding = (await log.verify()).findings[0]
    assert (finding.kind, finding.position) == ("altered", 2)


async def test_reordered_seals_are_named(log: Log) -> None:
    await log.superuser(
        "UPDATE audit_seals SET position = -2 WHERE position = 2",
        "UPDATE audit_seals SET position = 2 WHERE position = 3",
        "UPDATE audit_seals SET position = 3 WHERE position = -2",
    )
    finding = (await log.verify()).findings[0]
    assert (finding.kind, finding.position, finding.event_id) == ("reordered", 2, str(log.ids[2]))


async def test_a_forged_event_never_sealed_is_reported(log: Log) -> None:
    forged = uuid.uuid4()
    old = (datetime.now(UTC) - timedelta(hours=2)).strftime("%Y-%m-%d %H:%M:%S.%f")
    stored = f"'{forged.hex}'" if log.settings.is_sqlite else f"'{forged}'"
    await log.superuser(
        "INSERT INTO audit_events (id, occurred_at, event_type, outcome) "
        f"VALUES ({stored}, '{old}', 'lookup', 'not_on_plan')",
        f"DELETE FROM audit_unsealed WHERE event_id = {stored}",
    )
    findings = (await log.verify()).findings
    assert [(f.kind, f.event_id) for f in findings] == [("unsealed", str(forged))]


async def test_an_inserted_and_rechained_event_is_caught_by_the_checkpoint(log: Log) -> None:
    """A forger who inserts an event and recomputes every hash after it still cannot
    sign: the checkpoint held outside the database no longer matches."""
    held = (log.settings.checkpoint_dir / "latest.txt").read_text()
    forged = uuid.uuid4()
    stored = f"'{forged.hex}'" if log.settings.is_sqlite else f"'{forged}'"
    survivors = ", ".join(log.uid(n) for n in (3, 4, 5, 6))
    await log.superuser(
        "DELETE FROM audit_seals WHERE position >= 3",
        "DELETE FROM audit_checkpoints",
        "INSERT INTO audit_events (id, occurred_at, event_type, outcome) "
        f"VALUES ({stored}, '2000-01-01 00:00:00', 'lookup', 'not_on_plan')",
        "INSERT INTO audit_unsealed (event_id, occurred_at) "
        f"SELECT id, occurred_at FROM audit_events WHERE id IN ({survivors}, {stored}) "
        "AND id NOT IN (SELECT event_id FROM audit_unsealed)",
    )
    await log.sequencer.run_once()
    assert (await log.verify()).ok  # the database alone now looks consistent
    finding = (await log.verify(held=[held])).findings[0]
    assert (finding.kind, finding.position) == ("rewritten", 6)


async def test_a_truncated_tail_is_caught_by_the_checkpoint(log: Log) -> None:
    await log.superuser(
        "DELETE FROM audit_seals WHERE position >= 5",
        f"DELETE FROM audit_events WHERE id IN ({log.uid(5)}, {log.uid(6)})",
    )
    finding = (await log.verify()).findings[0]
    assert (finding.kind, finding.position) == ("truncated", 5)


async def test_a_truncated_tail_and_checkpoints_is_caught_by_the_copy_held_elsewhere(
    log: Log,
) -> None:
    held = (log.settings.checkpoint_dir / "latest.txt").read_text()
    await log.superuser(
        "DELETE FROM audit_seals WHERE position >= 5",
        f"DELETE FROM audit_events WHERE id IN ({log.uid(5)}, {log.uid(6)})",
        "DELETE FROM audit_checkpoints",
    )
    assert (await log.verify()).ok
    finding = (await log.verify(held=[held])).findings[0]
    assert (finding.kind, finding.position) == ("truncated", 5)


async def test_a_forged_checkpoint_signature_is_rejected(log: Log) -> None:
    note = (log.settings.checkpoint_dir / "latest.txt").read_text()
    forged = note.replace("\n6\n", "\n7\n")
    findings = (await log.verify(held=[forged])).findings
    assert [f.kind for f in findings] == ["forged_checkpoint"]


async def test_a_checkpoint_signed_by_another_key_is_rejected(
    log: Log, tmp_path_factory: pytest.TempPathFactory
) -> None:
    other = CheckpointSigner.from_file(
        tmp_path_factory.mktemp("other") / "k.pem", log.settings.audit_log_origin, create=True
    )
    from app.audit.chain import Checkpoint

    note = other.sign(Checkpoint(log.settings.audit_log_origin, 6, bytes(32), 0))
    findings = (await log.verify(held=[note])).findings
    assert [f.kind for f in findings] == ["forged_checkpoint"]


async def test_verifier_key_round_trips_for_outside_parties(log: Log) -> None:
    outside = CheckpointVerifier.from_vkey(log.signer.verifier.vkey)
    note = (log.settings.checkpoint_dir / "latest.txt").read_text()
    assert outside.open(note).size == 6


async def test_the_app_cannot_change_seals_or_checkpoints(log: Log) -> None:
    for statement in (
        "UPDATE audit_seals SET leaf_hash = 'x'",
        "DELETE FROM audit_seals",
        "UPDATE audit_checkpoints SET note = 'x'",
        "DELETE FROM audit_checkpoints",
    ):
        async with log.sessionmaker() as session:
            with pytest.raises(DBAPIError):
                await session.execute(text(statement))
            await session.rollback()


async def test_concurrent_writers_and_sequencers_never_fork_the_chain(log: Log) -> None:
    """16 writers and two sequencers (two replicas) at once: no fork, no gap."""
    other = Sequencer(log.sessionmaker, log.signer, log.settings)

    async def writer() -> None:
        for _ in range(10):
            await log.write(2)

    async def sealer(sequencer: Sequencer) -> None:
        for _ in range(15):
            await sequencer.run_once()
            await asyncio.sleep(0.01)

    await asyncio.gather(*(writer() for _ in range(16)), sealer(log.sequencer), sealer(other))
    await log.sequencer.run_once(checkpoint=True)
    report = await log.verify()
    assert report.ok, report.findings
    assert report.size == 6 + 16 * 10 * 2


async def test_custodian_verifies_the_live_log_over_http(
    client: httpx.AsyncClient,
    world: World,
    sessionmaker: async_sessionmaker[AsyncSession],
    app: FastAPI,
) -> None:
    await app.state.sequencer.run_once(checkpoint=True)
    response = await client.get("/v1/audit/verify", headers=world["custodian_a"].headers)
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["ok"] is True, report["findings"]
    assert report["size"] > 0
    assert report["checkpoints_checked"] >= 1
    signed = await client.post("/v1/audit/checkpoints", headers=world["custodian_a"].headers)
    assert signed.status_code == 200, signed.text
    latest = await client.get("/v1/audit/checkpoints/latest", headers=world["custodian_a"].headers)
    assert (
        CheckpointVerifier.from_vkey(latest.json()["verifier_key"]).open(latest.json()["note"]).size
        == latest.json()["size"]
    )


async def test_reference_points_may_not_verify_or_checkpoint(
    client: httpx.AsyncClient, world: World
) -> None:
    for principal in ("hospital_client", "duty_officer"):
        headers = world[principal].headers
        assert (await client.get("/v1/audit/verify", headers=headers)).status_code == 403
        assert (await client.post("/v1/audit/checkpoints", headers=headers)).status_code == 403


def test_workers_starting_together_share_one_checkpoint_key(tmp_path: Path) -> None:
    """Several uvicorn workers create the key on a first start; all must load the same."""
    path = tmp_path / "keys" / "checkpoint.pem"
    with ThreadPoolExecutor(8) as pool:
        signers = list(
            pool.map(lambda _: CheckpointSigner.from_file(path, "o", create=True), range(8))
        )
    assert len({signer.verifier.vkey for signer in signers}) == 1
    assert sorted(p.name for p in path.parent.iterdir()) == ["checkpoint.pem"]


# --- the sealing queue: written by the database, left only by sealing -----------------------


async def _queued(log: Log) -> int:
    async with log.sessionmaker() as session:
        return (await session.execute(text("SELECT count(*) FROM audit_unsealed"))).scalar_one()


@pytest.fixture
async def as_app_role(log: Log) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """Sessions acting as cpr_app (PostgreSQL), as the service does in production."""
    if log.settings.is_sqlite:
        pytest.skip("roles and privileges are PostgreSQL's; SQLite relies on its triggers")
    app = create_app(log.settings.model_copy(update={"database_role": "cpr_app"}))
    async with app.router.lifespan_context(app):
        yield app.state.sessionmaker


async def test_the_app_role_cannot_change_the_sealing_queue(
    log: Log, as_app_role: async_sessionmaker[AsyncSession]
) -> None:
    """The forgery of issue 11: as cpr_app, write an event dated in the future and
    take it off the queue so that it is never sealed. The database refuses the second
    half, and the verifier reports the first."""
    forged = uuid.uuid4()
    async with as_app_role() as session:
        assert await session.scalar(text("SELECT current_user")) == "cpr_app"
        session.add(
            AuditEvent(
                id=forged,
                occurred_at=datetime.now(UTC) + timedelta(days=1),
                event_type="lookup",
                outcome="on_plan",
            )
        )
        await session.commit()
    for statement in (
        f"DELETE FROM audit_unsealed WHERE event_id = '{forged}'",
        "DELETE FROM audit_unsealed",
        "UPDATE audit_unsealed SET queued_at = queued_at - interval '1 day'",
        "INSERT INTO audit_unsealed (event_id, occurred_at, queued_at) "
        f"VALUES ('{uuid.uuid4()}', now(), now() - interval '1 day')",
        "TRUNCATE audit_unsealed",
    ):
        async with as_app_role() as session:
            with pytest.raises(DBAPIError, match="permission denied"):
                await session.execute(text(statement))
            await session.rollback()
    assert await _queued(log) == 1
    findings = (await log.verify()).findings
    assert [(f.kind, f.event_id) for f in findings] == [("future_dated", str(forged))]


async def test_only_sealing_takes_an_event_off_the_queue(log: Log) -> None:
    """Even the owner (guards on) cannot dequeue an unsealed event or restamp it; the
    sequencer's seals take it off (a trigger: the sequencer deletes nothing)."""
    await log.write(1)
    waiting = log.stored(log.ids[-1])
    for statement, refusal in (
        (f"DELETE FROM audit_unsealed WHERE event_id = {waiting}", "only sealing"),
        ("UPDATE audit_unsealed SET queued_at = occurred_at", "append-only"),
    ):
        async with log.admin() as session:
            with pytest.raises(DBAPIError, match=refusal):
                await session.execute(text(statement))
            await session.rollback()
    assert await _queued(log) == 1
    sealed, _ = await log.sequencer.run_once()
    assert sealed.count == 1
    assert await _queued(log) == 0
    assert (await log.verify()).ok


async def test_an_event_taken_off_the_queue_is_reported_at_once(log: Log) -> None:
    """No waiting for the delay: an event with neither a seal nor a queue entry can
    never be sealed."""
    await log.write(1)
    removed = log.ids[-1]
    await log.superuser(f"DELETE FROM audit_unsealed WHERE event_id = {log.stored(removed)}")
    findings = (await log.verify()).findings
    assert [(f.kind, f.event_id) for f in findings] == [("unsealed", str(removed))]


async def test_the_sealing_delay_runs_from_when_the_event_was_written(log: Log) -> None:
    """Not from its occurred_at, which the writer chooses: an event dated two hours
    ago but written just now is within the delay; once the delay has passed since the
    database queued it, it is reported."""
    await log.write(1, occurred_at=datetime.now(UTC) - timedelta(hours=2))
    waiting = log.ids[-1]
    assert (await log.verify()).ok
    await asyncio.sleep(0.02)
    findings = (await log.verify(delay=timedelta(milliseconds=1))).findings
    assert [(f.kind, f.event_id) for f in findings] == [("unsealed", str(waiting))]
    await log.sequencer.run_once()
    assert (await log.verify(delay=timedelta(milliseconds=1))).ok


# --- events dated in the future -------------------------------------------------------------


async def test_an_event_dated_in_the_future_is_reported_sealed_or_not(log: Log) -> None:
    await log.write(1, occurred_at=datetime.now(UTC) + timedelta(days=1))
    ahead = log.ids[-1]
    findings = (await log.verify()).findings
    assert [(f.kind, f.event_id) for f in findings] == [("future_dated", str(ahead))]
    await log.sequencer.run_once(checkpoint=True)
    findings = (await log.verify()).findings
    assert [(f.kind, f.event_id, f.position) for f in findings] == [("future_dated", str(ahead), 7)]
    # Within the tolerance (clocks differ a little), nothing is said.
    await log.write(1, occurred_at=datetime.now(UTC) + timedelta(seconds=5))
    await log.sequencer.run_once(checkpoint=True)
    assert [f.event_id for f in (await log.verify()).findings] == [str(ahead)]


async def test_a_sealed_event_dated_after_its_checkpoint_is_reported(log: Log) -> None:
    """Once its date has come, a forged event no longer lies ahead of the clock, but it
    still lies ahead of the checkpoint that covered it: every event a checkpoint covers
    was written before the checkpoint was signed. Seen here with a checkpoint of the
    log as it was, signed (by the service's key) an hour before the date the event
    claims."""
    await log.write(1, occurred_at=datetime.now(UTC) - timedelta(minutes=10))
    dated = log.ids[-1]
    sealed, _ = await log.sequencer.run_once(checkpoint=True)
    earlier = log.signer.sign(
        Checkpoint(log.settings.audit_log_origin, 7, sealed.head, int(time.time()) - 4200)
    )
    assert (await log.verify()).ok
    findings = (await log.verify(held=[earlier])).findings
    assert [(f.kind, f.position, f.event_id) for f in findings] == [("future_dated", 7, str(dated))]


async def _custodian_headers(
    app: FastAPI, settings: Settings, http: httpx.AsyncClient
) -> dict[str, str]:
    async with app.state.sessionmaker() as session:
        await ensure_signing_key(session, settings.key_dir, actor="test:setup")
        authority = create_organisation(
            session,
            actor="test:setup",
            kind=OrganisationKind.local_authority,
            name=f"Test authority {uuid.uuid4().hex[:6]}",
            ods_code=None,
            contact_name="Safeguarding desk",
            contact_phone="020 7946 0101",
        )
        await session.flush()
        username, password = f"custodian-{uuid.uuid4().hex[:6]}", secrets.token_urlsafe(12)
        create_user(
            session,
            actor="test:setup",
            organisation=authority,
            username=username,
            full_name="Test custodian",
            role=UserRole.custodian,
            password=password,
        )
        await session.commit()
    issued = await http.post(
        "/oauth/token", data={"grant_type": "password", "username": username, "password": password}
    )
    assert issued.status_code == 200, issued.text
    return {"Authorization": f"Bearer {issued.json()['access_token']}"}


async def test_a_future_dated_event_fails_verification_over_http_and_the_cli(
    fresh_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = fresh_settings.model_copy(update={"sealing_enabled": True})
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        log = Log(app, settings)
        try:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
                headers = await _custodian_headers(app, settings, http)
                await log.write(1, occurred_at=datetime.now(UTC) + timedelta(hours=3))
                ahead = str(log.ids[-1])
                await app.state.sequencer.run_once(checkpoint=True)
                response = await http.get("/v1/audit/verify", headers=headers)
            assert response.status_code == 200, response.text
            report = response.json()
            assert report["ok"] is False
            assert [(f["kind"], f["event_id"]) for f in report["findings"]] == [
                ("future_dated", ahead)
            ]

            monkeypatch.setenv("DATABASE_URL", settings.database_url)
            if settings.database_role is not None:
                monkeypatch.setenv("CPR_DATABASE_ROLE", settings.database_role)
            monkeypatch.setenv("CPR_ENVIRONMENT", settings.environment.value)
            monkeypatch.setenv("CPR_KEY_DIR", str(settings.key_dir))
            monkeypatch.setenv("CPR_CHECKPOINT_KEY_PATH", str(settings.checkpoint_key_path))
            monkeypatch.setenv("CPR_CHECKPOINT_DIR", str(settings.checkpoint_dir))
            get_settings.cache_clear()
            try:
                result = await asyncio.to_thread(CliRunner().invoke, main, ["audit", "verify"])
            finally:
                get_settings.cache_clear()
            assert result.exit_code == 1, result.output
            assert "FAILED future_dated" in result.output
            assert f"event {ahead}" in result.output
        finally:
            await log.close()


# --- sealing beside another replica ---------------------------------------------------------


async def test_a_sequencer_skips_the_round_another_replica_is_sealing(
    log: Log, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It never waits on the sealing lock (waits are bounded by lock_timeout and would
    fail): the background loop skips the round; a round asked for retries for a
    bounded time, then skips (or, for a checkpoint, says so)."""
    if log.settings.is_sqlite:
        pytest.skip("the PostgreSQL advisory lock; SQLite has one writer anyway")
    await log.write(2)
    monkeypatch.setattr(sealing, "LOCK_WAIT_SECONDS", 0.2)
    async with log.admin() as other_replica:
        await other_replica.execute(
            text("SELECT pg_advisory_xact_lock(:key)"), {"key": SEAL_LOCK_KEY}
        )
        started = time.monotonic()
        sealed, signed = await log.sequencer.run_once(wait=False)  # the background loop
        assert sealed.skipped
        assert signed is None
        sealed, signed = await log.sequencer.run_once()  # retried, then given up
        assert sealed.skipped
        with pytest.raises(SealingBusy):
            await log.sequencer.run_once(checkpoint=True)
        assert time.monotonic() - started < 2
        await other_replica.rollback()
    sealed, signed = await log.sequencer.run_once(checkpoint=True)
    assert (sealed.count, sealed.size, sealed.skipped) == (2, 8, False)
    assert signed is not None
    assert (await log.verify()).ok


# --- checkpoint copies outside the database -------------------------------------------------


def _copies(directory: Path) -> dict[str, str]:
    return {path.name: path.read_text() for path in sorted(directory.iterdir())}


async def test_checkpoints_signed_while_the_directory_fails_reach_it_once_it_works(
    log: Log, capfd: pytest.CaptureFixture[str]
) -> None:
    settings = log.settings.model_copy(update={"checkpoint_interval_seconds": 0.5})
    sequencer = Sequencer(log.sessionmaker, log.signer, settings)
    log.app.state.sequencer = sequencer  # what /readyz asks
    directory = settings.checkpoint_dir
    await sequencer.run_once()
    assert sequencer.checkpoint_copy_problem() is None
    transport = httpx.ASGITransport(app=log.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        assert (await http.get("/readyz")).status_code == 200

        # Unwritable, whoever runs the test (root ignores permissions): a file where
        # the directory was.
        shutil.rmtree(directory)
        directory.write_text("not a directory\n")
        capfd.readouterr()
        signed = []
        for _ in range(3):
            await log.write(2)
            _, checkpoint = await sequencer.run_once(checkpoint=True)
            assert checkpoint is not None
            signed.append(checkpoint)
        assert [c.size for c in signed] == [8, 10, 12]
        assert sequencer.checkpoint_copy_problem() is None  # within the grace period
        output = "".join(capfd.readouterr())
        assert "audit_checkpoint_copy_failed" in output
        assert '"error_type"' in output
        assert "audit_sealing_failed" not in output
        assert (await log.verify()).ok  # sealing went on

        await asyncio.sleep(1.1)  # past the grace period: twice the checkpoint interval
        await sequencer.run_once()  # retried, and failing still
        problem = sequencer.checkpoint_copy_problem()
        assert problem is not None
        assert "checkpoint directory" in problem
        # Said, not failed: taking every replica out of the load balancer would stop the
        # lookups, while the checkpoints are safe in the database meanwhile.
        degraded = await http.get("/readyz")
        assert degraded.status_code == 200
        assert degraded.json()["status"] == "degraded"
        assert any("checkpoint directory" in p for p in degraded.json()["problems"])

        directory.unlink()
        directory.mkdir()
        await sequencer.run_once()
        assert sequencer.checkpoint_copy_problem() is None
        assert _copies(directory) == {
            **{f"checkpoint-{c.size:012d}.txt": c.note for c in signed},
            "latest.txt": signed[-1].note,
        }
        assert "audit_checkpoint_copy_restored" in "".join(capfd.readouterr())
        assert (await http.get("/readyz")).json() == {"status": "ready"}


async def test_a_starting_sequencer_copies_what_its_directory_lacks(
    log: Log, tmp_path: Path
) -> None:
    """The directory's latest.txt against the newest checkpoint in the database: every
    checkpoint after the one it holds is copied (here, from a directory that missed
    them), and latest.txt never goes back to an older one."""
    held = (log.settings.checkpoint_dir / "latest.txt").read_text()  # size 6
    directory = tmp_path / "held-elsewhere"
    directory.mkdir()
    (directory / "latest.txt").write_text(held)
    for _ in range(2):
        await log.write(1)
        await log.sequencer.run_once(checkpoint=True)  # 7 and 8, copied to the other dir
    settings = log.settings.model_copy(update={"checkpoint_dir": directory})
    restarted = Sequencer(log.sessionmaker, log.signer, settings)
    await restarted.run_once()
    assert restarted.checkpoint_copy_problem() is None
    stored = _copies(log.settings.checkpoint_dir)
    assert _copies(directory) == {
        "checkpoint-000000000007.txt": stored["checkpoint-000000000007.txt"],
        "checkpoint-000000000008.txt": stored["checkpoint-000000000008.txt"],
        "latest.txt": stored["checkpoint-000000000008.txt"],
    }
    sealing.publish_checkpoint(directory, held, 6)  # an older one, late
    assert (directory / "latest.txt").read_text() == stored["checkpoint-000000000008.txt"]


async def test_a_hung_checkpoint_directory_does_not_stop_the_sealing(
    log: Log, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stuck network mount: the copy never returns. Each round waits for it only
    briefly, seals on, and the copy completes when the directory answers again."""
    release = threading.Event()
    publish = sealing.publish_checkpoints

    def stuck(directory: Path, checkpoints: list[tuple[int, str]]) -> None:
        release.wait(10)
        publish(directory, checkpoints)

    monkeypatch.setattr(sealing, "publish_checkpoints", stuck)
    monkeypatch.setattr(sealing, "COPY_WAIT_SECONDS", 0.1)
    settings = log.settings.model_copy(update={"checkpoint_interval_seconds": 0.05})
    sequencer = Sequencer(log.sessionmaker, log.signer, settings)
    try:
        started = time.monotonic()
        for _ in range(3):
            await log.write(1)
            sealed, checkpoint = await sequencer.run_once(checkpoint=True)
            assert sealed.count == 1
            assert checkpoint is not None
        assert time.monotonic() - started < 3
        assert (await log.verify()).ok
        assert sequencer.checkpoint_copy_problem() is not None
    finally:
        release.set()
    for _ in range(50):
        await sequencer.run_once()
        if sequencer.checkpoint_copy_problem() is None:
            break
        await asyncio.sleep(0.05)
    assert sequencer.checkpoint_copy_problem() is None
    latest = (log.settings.checkpoint_dir / "latest.txt").read_text()
    assert log.signer.verifier.open(latest).size == 9


async def test_a_backlog_is_sealed_in_bounded_transactions_each_committed(
    log: Log, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A queue longer than a round (after a restart, or a seeded history) is sealed in
    rounds of ROUND_BATCHES batches, each committed as it ends: another connection sees
    the first round's seals while later rounds are still to come, and one checkpoint is
    signed, at the end, over the whole log."""
    monkeypatch.setattr(sealing, "ROUND_BATCHES", 2)
    settings = log.settings.model_copy(update={"sealing_batch_size": 5})
    sequencer = Sequencer(log.sessionmaker, log.signer, settings)
    await log.write(23)  # three rounds of at most 10, after the fixture's 6
    seen_between_rounds: list[int] = []
    seal = sequencer._seal

    async def observed(*, checkpoint: bool) -> Any:
        async with log.admin() as session:
            seen_between_rounds.append(
                await session.scalar(select(func.count()).select_from(AuditSeal))
            )
        return await seal(checkpoint=checkpoint)

    monkeypatch.setattr(sequencer, "_seal", observed)
    total, signed = await sequencer.run_once(checkpoint=True)
    assert (total.count, total.size) == (23, 29)
    assert seen_between_rounds == [6, 16, 26]
    assert signed is not None
    assert signed.size == 29
    assert (await log.verify()).ok
