"""The log proves it has not been changed: tamper with the database directly, in
every way, as the file owner / superuser, and the verifier names the event."""

import asyncio
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.audit.chain import CheckpointSigner, CheckpointVerifier
from app.audit.models import AuditEvent, AuditSeal
from app.audit.sealing import Sequencer
from app.audit.verify import Report, verify_log
from app.config import Settings
from app.main import create_app
from tests.conftest import World

DELAY = timedelta(seconds=30)


class Log:
    """A fresh database with its own log, its sequencer driven by the test."""

    def __init__(self, app: FastAPI, settings: Settings) -> None:
        self.settings = settings
        self.sessionmaker: async_sessionmaker[AsyncSession] = app.state.sessionmaker
        self.signer = CheckpointSigner.from_file(
            settings.checkpoint_key_path, settings.audit_log_origin, create=True
        )
        self.sequencer = Sequencer(self.sessionmaker, self.signer, settings)
        self.ids: list[uuid.UUID] = []

    async def write(self, count: int) -> None:
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
                session.add(event)
                self.ids.append(event.id)
            await session.commit()

    async def verify(self, held: list[str] = ()) -> Report:  # type: ignore[assignment]
        async with self.sessionmaker() as session:
            return await verify_log(
                session, self.signer.verifier, sealing_delay=DELAY, held_checkpoints=held
            )

    async def superuser(self, *statements: str) -> None:
        """Change the store as its owner would: guards off, change, guards back on."""
        async with self.sessionmaker() as session:
            sqlite = (await session.connection()).dialect.name == "sqlite"
            for table in ("audit_events", "audit_seals", "audit_checkpoints"):
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
                for table in ("audit_events", "audit_seals", "audit_checkpoints"):
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
        await sealed.write(6)
        await sealed.sequencer.run_once(checkpoint=True)
        await sealed.load_positions()
        yield sealed


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
