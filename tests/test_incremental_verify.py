"""Incremental verification (`cpr audit verify --since`, `GET /v1/audit/verify?since=`):
from a checkpoint the auditor holds, the log must still reach its head at its size, and
what was sealed after it is verified as the full walk would. Tampering goes through the
owner's connection, as in tests/test_audit_chain.py; both databases."""

import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner, Result
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError

from app.audit import verify
from app.audit.archive import ARCHIVE_DELETED, ARCHIVED, verify_archive
from app.audit.chain import Checkpoint
from app.audit.models import AuditCheckpoint, AuditEvent, AuditSeal
from app.audit.sealing import Sequencer
from app.audit.verify import Report, verify_since
from app.cli import main
from app.config import Settings, get_settings
from app.main import create_app
from tests.conftest import FreshDatabase
from tests.test_audit_chain import DELAY, Log, _custodian_headers


@pytest.fixture
async def log(fresh_settings: Settings) -> AsyncIterator[Log]:
    """Six events sealed under a checkpoint (the one held), then four more under another."""
    app = create_app(fresh_settings)
    async with app.router.lifespan_context(app):
        sealed = Log(app, fresh_settings)
        try:
            await sealed.write(6)
            await sealed.sequencer.run_once(checkpoint=True)
            sealed.held = held_note(fresh_settings)  # type: ignore[attr-defined]
            await sealed.write(4)
            await sealed.sequencer.run_once(checkpoint=True)
            await sealed.load_positions()
            yield sealed
        finally:
            await sealed.close()


def held_note(settings: Settings) -> str:
    return (settings.checkpoint_dir / "latest.txt").read_text()


async def since(log: Log, note: str, *, delay: timedelta = DELAY) -> Report:
    async with log.sessionmaker() as session:
        return await verify_since(session, log.signer.verifier, note, sealing_delay=delay)


def kinds(report: Report) -> list[tuple[str, int | None]]:
    return [(f.kind, f.position) for f in report.findings]


async def test_an_untouched_log_verifies_from_the_checkpoint_held(log: Log) -> None:
    report = await since(log, log.held)  # type: ignore[attr-defined]
    assert report.ok, report.findings
    assert (report.since, report.size) == (6, 10)
    assert report.head == (await log.verify()).head
    # The held one and the one stored after it: never the stored one it starts from.
    assert report.checkpoints_checked == 2


async def test_from_the_newest_checkpoint_nothing_is_left_to_walk(log: Log) -> None:
    report = await since(log, held_note(log.settings))
    assert report.ok, report.findings
    assert (report.since, report.size) == (10, 10)


async def test_an_event_changed_after_the_checkpoint_is_named(log: Log) -> None:
    await log.superuser(f"UPDATE audit_events SET outcome = 'on_plan' WHERE id = {log.uid(8)}")
    report = await since(log, log.held)  # type: ignore[attr-defined]
    finding = report.findings[0]
    assert (finding.kind, finding.position, finding.event_id) == ("altered", 8, str(log.ids[7]))


async def test_an_event_deleted_after_the_checkpoint_is_named(log: Log) -> None:
    await log.superuser(
        "DELETE FROM audit_seals WHERE position = 9",
        f"DELETE FROM audit_events WHERE id = {log.uid(9)}",
    )
    assert kinds(await since(log, log.held))[0] == ("removed", 9)  # type: ignore[attr-defined]


async def test_a_history_rewritten_before_the_checkpoint_no_longer_extends_it(log: Log) -> None:
    """A forger changes event 3 and recomputes every hash after it (the sequencer seals
    again): the chain verifies in the database alone, but at size 6 its head is not the
    one the held checkpoint signed."""
    survivors = ", ".join(log.uid(n) for n in range(3, 11))
    await log.superuser(
        "DELETE FROM audit_seals WHERE position >= 3",
        "DELETE FROM audit_checkpoints",
        f"UPDATE audit_events SET outcome = 'on_plan' WHERE id = {log.uid(3)}",
        "INSERT INTO audit_unsealed (event_id, occurred_at) "
        f"SELECT id, occurred_at FROM audit_events WHERE id IN ({survivors}) "
        "AND id NOT IN (SELECT event_id FROM audit_unsealed)",
    )
    await log.sequencer.run_once(checkpoint=True)
    assert (await log.verify()).ok  # the database alone looks consistent
    report = await since(log, log.held)  # type: ignore[attr-defined]
    assert kinds(report) == [("rewritten", 6)]
    assert "no longer extends the checkpoint held" in report.findings[0].detail


async def test_an_event_changed_before_the_checkpoint_is_left_to_the_full_walk(log: Log) -> None:
    """What --since does not do (docs/audit-log.md): an old event changed but its seal
    left as it was does not move the head, so only the full walk, which recomputes
    every leaf, names it."""
    await log.superuser(f"UPDATE audit_events SET outcome = 'on_plan' WHERE id = {log.uid(2)}")
    assert (await since(log, log.held)).ok  # type: ignore[attr-defined]
    assert kinds(await log.verify())[0] == ("altered", 2)


async def test_a_forged_checkpoint_held_is_refused(log: Log) -> None:
    forged = log.held.replace("\n6\n", "\n7\n")  # type: ignore[attr-defined]
    report = await since(log, forged)
    assert [f.kind for f in report.findings] == ["forged_checkpoint"]
    assert report.checkpoints_checked == 0
    garbage = await since(log, "not a checkpoint\n")
    assert [f.kind for f in garbage.findings] == ["forged_checkpoint"]


async def test_a_checkpoint_held_beyond_the_log_is_reported(log: Log) -> None:
    """Signed by the service's own key, for 50 events the log does not have (a tail
    truncated after the auditor took it)."""
    beyond = log.signer.sign(
        Checkpoint(log.settings.audit_log_origin, 50, bytes(32), int(time.time()))
    )
    report = await since(log, beyond)
    assert kinds(report) == [("truncated", 11)]
    assert "covers 50 events but the log has only 10" in report.findings[0].detail


async def test_a_truncated_tail_after_the_checkpoint_is_caught_by_a_stored_one(log: Log) -> None:
    await log.superuser(
        "DELETE FROM audit_seals WHERE position >= 9",
        f"DELETE FROM audit_events WHERE id IN ({log.uid(9)}, {log.uid(10)})",
    )
    assert kinds(await since(log, log.held)) == [("truncated", 9)]  # type: ignore[attr-defined]


async def test_an_event_taken_off_the_queue_after_the_checkpoint_is_reported(log: Log) -> None:
    await log.write(1)
    removed = log.ids[-1]
    await log.superuser(f"DELETE FROM audit_unsealed WHERE event_id = {log.stored(removed)}")
    report = await since(log, log.held)  # type: ignore[attr-defined]
    assert [(f.kind, f.event_id) for f in report.findings] == [("unsealed", str(removed))]
    # And waiting past the delay, as in the full walk.
    await log.write(1)
    waiting = log.ids[-1]
    await asyncio.sleep(0.02)
    late = await since(log, log.held, delay=timedelta(milliseconds=1))  # type: ignore[attr-defined]
    assert {(f.kind, f.event_id) for f in late.findings} == {
        ("unsealed", str(removed)),
        ("unsealed", str(waiting)),
    }


async def test_an_event_dated_after_the_checkpoint_that_covers_it_is_reported(log: Log) -> None:
    await log.write(1, occurred_at=datetime.now(UTC) - timedelta(minutes=10))
    dated = log.ids[-1]
    sealed, _ = await log.sequencer.run_once(checkpoint=True)
    earlier = log.signer.sign(
        Checkpoint(log.settings.audit_log_origin, 11, sealed.head, int(time.time()) - 4200)
    )
    async with log.sessionmaker() as session:
        report = await verify_since(
            session,
            log.signer.verifier,
            log.held,  # type: ignore[attr-defined]
            sealing_delay=DELAY,
            held_checkpoints=[earlier],
        )
    assert [(f.kind, f.position, f.event_id) for f in report.findings] == [
        ("future_dated", 11, str(dated))
    ]


async def test_pages_smaller_than_the_log_change_nothing(log: Log) -> None:
    """Seals, events and checkpoints are read a page at a time."""
    await log.write(3)
    await log.sequencer.run_once(checkpoint=True)
    await log.load_positions()
    async with log.sessionmaker() as session:
        report = await verify_since(
            session,
            log.signer.verifier,
            log.held,  # type: ignore[attr-defined]
            sealing_delay=DELAY,
            page_size=2,
        )
    assert report.ok, report.findings
    assert report.size == 13
    await log.superuser(f"UPDATE audit_events SET outcome = 'on_plan' WHERE id = {log.uid(12)}")
    async with log.sessionmaker() as session:
        report = await verify_since(
            session,
            log.signer.verifier,
            log.held,  # type: ignore[attr-defined]
            sealing_delay=DELAY,
            page_size=2,
        )
    assert kinds(report)[0] == ("altered", 12)


# --- over HTTP and through the command ------------------------------------------------------


async def test_a_custodian_verifies_from_a_checkpoint_held_over_http(log: Log) -> None:
    log.app.state.checkpoint_verifier = log.signer.verifier  # made after the app started
    transport = httpx.ASGITransport(app=log.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        headers = await _custodian_headers(log.app, log.settings, http)
        await log.sequencer.run_once(checkpoint=True)  # the custodian's sign-in was logged
        held = log.held  # type: ignore[attr-defined]
        ok = await http.get("/v1/audit/verify", params={"since": held}, headers=headers)
        assert ok.status_code == 200, ok.text
        assert (ok.json()["ok"], ok.json()["since"]) == (True, 6)
        assert ok.json()["size"] > 10
        whole = await http.get("/v1/audit/verify", headers=headers)
        assert (whole.json()["ok"], whole.json()["since"]) == (True, 0)
        # What to keep, and send as since next time: the newest checkpoint verified.
        kept = whole.json()["checkpoint"]
        assert log.signer.verifier.open(kept).size == whole.json()["size"]
        onwards = await http.get("/v1/audit/verify", params={"since": kept}, headers=headers)
        assert (onwards.json()["ok"], onwards.json()["since"]) == (True, whole.json()["size"])

        forged = held.replace("\n6\n", "\n7\n")
        refused = await http.get("/v1/audit/verify", params={"since": forged}, headers=headers)
        assert refused.status_code == 200
        assert refused.json()["ok"] is False
        assert refused.json()["checkpoint"] is None
        assert [f["kind"] for f in refused.json()["findings"]] == ["forged_checkpoint"]

        await log.superuser(f"UPDATE audit_events SET outcome = 'on_plan' WHERE id = {log.uid(7)}")
        found = await http.get("/v1/audit/verify", params={"since": held}, headers=headers)
        assert [(f["kind"], f["position"]) for f in found.json()["findings"]] == [("altered", 7)]

        too_long = await http.get("/v1/audit/verify", params={"since": "x" * 5000}, headers=headers)
        assert too_long.status_code == 422


@pytest.fixture
def command_env(log: Log, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """`cpr` pointed at the test's own database and keys."""
    settings = log.settings
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    if settings.database_role is not None:
        monkeypatch.setenv("CPR_DATABASE_ROLE", settings.database_role)
    monkeypatch.setenv("CPR_ENVIRONMENT", settings.environment.value)
    monkeypatch.setenv("CPR_KEY_DIR", str(settings.key_dir))
    monkeypatch.setenv("CPR_CHECKPOINT_KEY_PATH", str(settings.checkpoint_key_path))
    monkeypatch.setenv("CPR_CHECKPOINT_DIR", str(settings.checkpoint_dir))
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


async def cpr(*arguments: str) -> Result:
    return await asyncio.to_thread(CliRunner().invoke, main, list(arguments))


@pytest.mark.usefixtures("command_env")
async def test_the_command_verifies_since_a_checkpoint_file_or_text(
    log: Log, tmp_path: Path
) -> None:
    held = tmp_path / "held.txt"
    held.write_text(log.held)  # type: ignore[attr-defined]
    result = await cpr("audit", "verify", "--since", str(held))
    assert result.exit_code == 0, result.output
    assert "from the checkpoint held at size 6" in result.output
    assert "OK: every event, hash and checkpoint after size 6 verifies" in result.output
    as_text = await cpr("audit", "verify", "--since", log.held)  # type: ignore[attr-defined]
    assert as_text.exit_code == 0, as_text.output

    forged = tmp_path / "forged.txt"
    forged.write_text(log.held.replace("\n6\n", "\n7\n"))  # type: ignore[attr-defined]
    refused = await cpr("audit", "verify", "--since", str(forged))
    assert refused.exit_code == 1, refused.output
    assert "FAILED forged_checkpoint: the checkpoint held:" in refused.output
    assert "Traceback" not in refused.output

    missing = await cpr("audit", "verify", "--since", str(tmp_path / "nowhere.txt"))
    assert missing.exit_code == 2, missing.output
    assert "is neither a file nor a checkpoint note" in missing.output
    assert "Traceback" not in missing.output

    await log.superuser(f"UPDATE audit_events SET outcome = 'on_plan' WHERE id = {log.uid(8)}")
    found = await cpr("audit", "verify", "--since", str(held))
    assert found.exit_code == 1, found.output
    failed = [line for line in found.output.splitlines() if line.startswith("FAILED")]
    assert failed == [
        f"FAILED altered position 8 event {log.ids[7]}: the event differs from what was "
        "sealed at this position (changed, or swapped with another)"
    ]


@pytest.mark.usefixtures("command_env")
async def test_the_command_reports_a_checkpoint_beyond_the_log(log: Log, tmp_path: Path) -> None:
    beyond = tmp_path / "beyond.txt"
    beyond.write_text(
        log.signer.sign(Checkpoint(log.settings.audit_log_origin, 50, bytes(32), int(time.time())))
    )
    result = await cpr("audit", "verify", "--since", str(beyond))
    assert result.exit_code == 1, result.output
    assert "FAILED truncated position 11: the checkpoint held covers 50 events" in result.output


# --- how many checkpoints are kept ----------------------------------------------------------


async def _stored(log: Log) -> int:
    async with log.sessionmaker() as session:
        return int(await session.scalar(select(func.count()).select_from(AuditCheckpoint)) or 0)


async def test_concurrent_sequencers_sign_one_checkpoint_per_interval_for_the_service(
    log: Log,
) -> None:
    """Two replicas' sequencers seal in turn: between them, one checkpoint per interval,
    not one each; and none at all while the head does not move."""
    settings = log.settings.model_copy(update={"checkpoint_interval_seconds": 0.6})
    first = Sequencer(log.sessionmaker, log.signer, settings)
    second = Sequencer(log.sessionmaker, log.signer, settings)
    before = await _stored(log)
    # Fresh sequencers (a restart): the head has not moved, so nothing new is signed.
    for sequencer in (first, second):
        _, signed = await sequencer.run_once()
        assert signed is None
    assert await _stored(log) == before

    await log.write(1)
    started = time.monotonic()
    while time.monotonic() - started < 0.5:  # within one interval, both sealing
        await log.write(1)
        await first.run_once()
        await log.write(1)
        await second.run_once()
        await asyncio.sleep(0.05)
    assert await _stored(log) - before <= 1

    await asyncio.sleep(0.7)
    await log.write(1)
    _, signed = await second.run_once()
    assert signed is not None  # the interval has passed: due again, for either
    _, again = await first.run_once()
    assert again is None
    assert (await log.verify()).ok


async def test_a_checkpoint_asked_for_is_signed_whatever_the_interval(log: Log) -> None:
    await log.write(1)
    sealed, signed = await log.sequencer.run_once(checkpoint=True)
    assert signed is not None
    assert signed.size == sealed.size == 11
    _, again = await log.sequencer.run_once(checkpoint=True)
    assert again is not None
    assert again.size == 11  # the head has not moved: the same checkpoint, not a new one
    assert await _stored(log) == 3


@pytest.mark.usefixtures("command_env")
async def test_the_command_keeps_the_checkpoint_to_verify_from_next_time(
    log: Log, tmp_path: Path
) -> None:
    """Full once, then --since what it kept, again and again: each run starts where the
    last one ended, and a run that fails keeps nothing."""
    kept = tmp_path / "verified.txt"
    first = await cpr("audit", "verify", "--keep", str(kept))
    assert first.exit_code == 0, first.output
    assert "kept the checkpoint at size 10" in first.output
    assert log.signer.verifier.open(kept.read_text()).size == 10

    await log.write(2)
    await log.sequencer.run_once(checkpoint=True)
    await log.load_positions()
    second = await cpr("audit", "verify", "--since", str(kept), "--keep", str(kept))
    assert second.exit_code == 0, second.output
    assert "from the checkpoint held at size 10" in second.output
    assert log.signer.verifier.open(kept.read_text()).size == 12

    await log.write(1)
    sealed, signed = await log.sequencer.run_once()  # sealed, not yet under a checkpoint
    assert (sealed.size, signed) == (13, None)
    await log.load_positions()
    await log.superuser(f"UPDATE audit_events SET outcome = 'on_plan' WHERE id = {log.uid(13)}")
    third = await cpr("audit", "verify", "--since", str(kept), "--keep", str(kept))
    assert third.exit_code == 1, third.output
    assert "FAILED altered position 13" in third.output
    assert log.signer.verifier.open(kept.read_text()).size == 12  # unchanged


# --- archives: a closed segment that verifies on its own ------------------------------------


@pytest.mark.usefixtures("command_env")
async def test_an_archive_of_the_segment_up_to_a_checkpoint_verifies_on_its_own(
    log: Log, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = tmp_path / "held.txt"
    held.write_text(log.held)  # type: ignore[attr-defined]
    archive = tmp_path / "segment.jsonl"
    written = await cpr("audit", "archive", "--before", str(held), "--to", str(archive))
    assert written.exit_code == 0, written.output
    assert "wrote positions 1 to 6" in written.output
    assert "nothing deleted: no retention period is set" in written.output
    lines = archive.read_text().splitlines()
    assert len(lines) == 7  # the header and six events
    async with log.sessionmaker() as session:
        recorded = (
            await session.scalars(select(AuditEvent).where(AuditEvent.event_type == ARCHIVED))
        ).one()
    assert recorded.detail is not None
    assert recorded.detail["to_size"] == 6
    assert recorded.detail["sha256"] in written.output

    again = await cpr("audit", "archive", "--before", str(held), "--to", str(archive))
    assert again.exit_code == 2, again.output
    assert "an archive is never replaced" in again.output

    # The file alone, with the public keys: no database (none can be reached here).
    monkeypatch.setenv("DATABASE_URL", "postgresql+asyncpg://nobody@127.0.0.1:1/none")
    get_settings.cache_clear()
    keys = tmp_path / "verifiers.json"
    keys.write_text(log.signer.verifier.to_json())
    checked = await cpr("audit", "verify", "--archive", str(archive), "--verifier-keys", str(keys))
    assert checked.exit_code == 0, checked.output
    assert "size 6" in checked.output
    assert "OK: every event, hash and checkpoint in segment.jsonl verifies" in checked.output
    assert verify_archive(archive, log.signer.verifier).ok

    # Changed, cut short, or closed by a forged checkpoint: each is named.
    header, *events = lines
    changed = tmp_path / "changed.jsonl"
    changed.write_text(
        "\n".join([header, *events[:2], events[2].replace("not_on_plan", "on_plan"), *events[3:]])
        + "\n"
    )
    assert [
        (f.kind, f.position) for f in verify_archive(changed, log.signer.verifier).findings
    ] == [("altered", 3)]
    short = tmp_path / "short.jsonl"
    short.write_text("\n".join([header, *events[:5]]) + "\n")
    assert [f.kind for f in verify_archive(short, log.signer.verifier).findings] == ["truncated"]
    forged = tmp_path / "forged.jsonl"
    forged.write_text("\n".join([header.replace("\\n6\\n", "\\n7\\n"), *events]) + "\n")
    refused = await cpr("audit", "verify", "--archive", str(forged), "--verifier-keys", str(keys))
    assert refused.exit_code == 1, refused.output
    assert "FAILED forged_checkpoint: the closing checkpoint" in refused.output
    garbage = tmp_path / "garbage.jsonl"
    garbage.write_text("not json\n")
    broken = await cpr("audit", "verify", "--archive", str(garbage), "--verifier-keys", str(keys))
    assert broken.exit_code == 1, broken.output
    assert "FAILED malformed_archive" in broken.output
    assert "Traceback" not in broken.output + refused.output


@pytest.mark.usefixtures("command_env")
async def test_no_archive_is_written_of_a_chain_that_does_not_verify(
    log: Log, tmp_path: Path
) -> None:
    await log.superuser(f"UPDATE audit_events SET outcome = 'on_plan' WHERE id = {log.uid(4)}")
    archive = tmp_path / "segment.jsonl"
    result = await cpr("audit", "archive", "--before", log.held, "--to", str(archive))  # type: ignore[attr-defined]
    assert result.exit_code == 1, result.output
    assert "FAILED altered: the event differs" in result.output
    assert "nothing was written" in result.output
    assert not archive.exists()
    assert [n for n in os.listdir(tmp_path) if "segment" in n] == []  # no partial file either


async def test_the_full_walk_finds_an_event_off_the_queue_in_any_id_range(
    log: Log, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Events are counted against seals and queue by id range (so no statement reads
    the whole log): split into 16 ranges here, the event is named all the same."""
    monkeypatch.setattr(verify, "RANGE_EVENTS", 1)
    assert len(verify.id_ranges(10)) == 16
    assert (await log.verify()).ok
    await log.write(1)
    removed = log.ids[-1]
    await log.superuser(f"DELETE FROM audit_unsealed WHERE event_id = {log.stored(removed)}")
    findings = (await log.verify()).findings
    assert [(f.kind, f.event_id) for f in findings] == [("unsealed", str(removed))]


# --- archiving then deleting: the chain goes on from the archive ----------------------------


@pytest.fixture
async def old_log(fresh_settings: Settings) -> AsyncIterator[Log]:
    """Six events ten days old under a checkpoint (held), then four of today under another."""
    app = create_app(fresh_settings)
    async with app.router.lifespan_context(app):
        sealed = Log(app, fresh_settings)
        try:
            await sealed.write(6, occurred_at=datetime.now(UTC) - timedelta(days=10))
            await sealed.sequencer.run_once(checkpoint=True)
            sealed.held = held_note(fresh_settings)  # type: ignore[attr-defined]
            await sealed.write(4)
            await sealed.sequencer.run_once(checkpoint=True)
            await sealed.load_positions()
            yield sealed
        finally:
            await sealed.close()


@pytest.fixture
def owner_env(
    old_log: Log, fresh: FreshDatabase, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """`cpr` as the schema owner (its own login, no CPR_DATABASE_ROLE), retention one day."""
    settings = old_log.settings
    monkeypatch.setenv("DATABASE_URL", fresh.database.owner_url)
    monkeypatch.delenv("CPR_DATABASE_ROLE", raising=False)
    monkeypatch.setenv("CPR_ENVIRONMENT", settings.environment.value)
    monkeypatch.setenv("CPR_KEY_DIR", str(settings.key_dir))
    monkeypatch.setenv("CPR_CHECKPOINT_KEY_PATH", str(settings.checkpoint_key_path))
    monkeypatch.setenv("CPR_CHECKPOINT_DIR", str(settings.checkpoint_dir))
    monkeypatch.setenv("CPR_AUDIT_RETENTION_DAYS", "1")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


async def _seal_positions(log: Log) -> list[int]:
    async with log.sessionmaker() as session:
        return list(await session.scalars(select(AuditSeal.position).order_by(AuditSeal.position)))


@pytest.mark.usefixtures("owner_env")
async def test_an_archived_segment_is_deleted_and_the_chain_goes_on_from_it(
    old_log: Log, tmp_path: Path
) -> None:
    log = old_log
    first = tmp_path / "segment-1.jsonl"
    written = await cpr("audit", "archive", "--before", log.held, "--to", str(first))  # type: ignore[attr-defined]
    assert written.exit_code == 0, written.output
    assert "wrote positions 1 to 6" in written.output
    assert "deleted 6 events from the database" in written.output
    assert (await _seal_positions(log))[0] == 7
    assert verify_archive(first, log.signer.verifier).ok

    # Verification starts from the archive's closing checkpoint, full and --since.
    report = await log.verify()
    assert report.ok, report.findings
    assert (report.since, report.size) == (6, 10)
    assert (await since(log, log.held)).ok  # type: ignore[attr-defined]
    async with log.sessionmaker() as session:
        recorded = list(
            await session.scalars(
                select(AuditEvent.event_type).where(AuditEvent.event_type == ARCHIVE_DELETED)
            )
        )
    assert recorded == [ARCHIVE_DELETED]
    older = log.signer.sign(
        Checkpoint(log.settings.audit_log_origin, 3, bytes(32), int(time.time()))
    )
    assert [f.kind for f in (await since(log, older)).findings] == ["archived"]

    # The owner, guards on, still cannot delete what no archive covers.
    async with log.admin() as session:
        with pytest.raises(DBAPIError, match="append-only"):
            await session.execute(text("DELETE FROM audit_seals WHERE position = 8"))
        await session.rollback()

    # Archived up to the head: the sequencer goes on from the archive's head.
    _, signed = await log.sequencer.run_once(checkpoint=True)  # the archiving's own event
    assert signed is not None
    second = tmp_path / "segment-2.jsonl"
    again = await cpr("audit", "archive", "--before", signed.note, "--to", str(second))
    assert again.exit_code == 0, again.output
    assert f"wrote positions 7 to {signed.size}" in again.output
    assert "nothing deleted: events in it are within the retention period (1 days)" in again.output
    checked = verify_archive(second, log.signer.verifier)
    assert checked.ok, checked.findings
    assert (checked.since, checked.size) == (6, signed.size)


@pytest.mark.usefixtures("owner_env")
async def test_a_log_archived_to_its_head_is_sealed_on_from_the_archive(
    old_log: Log, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every seal deleted: the sequencer takes the chain's head from the archive, and the
    next event is sealed at the next position, as if nothing had been deleted."""
    log = old_log
    # Retention of none at all (any event is old enough): everything to the head goes.
    monkeypatch.setenv("CPR_AUDIT_RETENTION_DAYS", "1")
    monkeypatch.setattr("app.cli.utcnow", lambda: datetime.now(UTC) + timedelta(days=30))
    _, signed = await log.sequencer.run_once(checkpoint=True)
    assert signed is not None
    archive = tmp_path / "all.jsonl"
    result = await cpr("audit", "archive", "--before", signed.note, "--to", str(archive))
    assert result.exit_code == 0, result.output
    assert f"deleted {signed.size} events" in result.output
    assert await _seal_positions(log) == []

    emptied = await log.verify()
    assert emptied.ok, emptied.findings
    assert emptied.newest == signed.note  # what to verify --since next: the archive's

    await log.write(1)
    sealed, _ = await log.sequencer.run_once(checkpoint=True)
    assert await _seal_positions(log) == [signed.size + 1, signed.size + 2][: sealed.count]
    report = await log.verify()
    assert report.ok, report.findings
    assert (report.since, report.size) == (signed.size, signed.size + sealed.count)
    assert verify_archive(archive, log.signer.verifier).ok


@pytest.mark.usefixtures("owner_env")
async def test_the_service_role_archives_but_never_deletes(
    old_log: Log, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if old_log.settings.is_sqlite:
        pytest.skip("roles are PostgreSQL's; on SQLite the file's owner is the service")
    monkeypatch.setenv("DATABASE_URL", old_log.settings.database_url)
    monkeypatch.setenv("CPR_DATABASE_ROLE", str(old_log.settings.database_role))
    get_settings.cache_clear()
    archive = tmp_path / "segment.jsonl"
    result = await cpr("audit", "archive", "--before", old_log.held, "--to", str(archive))  # type: ignore[attr-defined]
    assert result.exit_code == 0, result.output
    assert "nothing deleted: the command acts as the role cpr_app" in result.output
    assert (await _seal_positions(old_log))[0] == 1
