"""The sequencer: seals queued events into the hash chain and signs checkpoints.

A lookup's transaction only inserts its event (a trigger queues it). Sealing
runs apart, in batches, under one lock (a PostgreSQL advisory lock; on SQLite
the write lock): positions are gap-free and never forked however many
replicas run a sequencer, and no lookup waits on another lookup's sealing.
Inserting the seals is what takes the events off the queue (a trigger too): the
sequencer never deletes from it, and the application role cannot.

Each checkpoint is then copied to ``checkpoint_dir``. A copy that fails (the
directory full, read-only, gone) is retried every round until the directory
holds every checkpoint signed since its last good copy; sealing goes on meanwhile.

The checkpoint key can be rotated under a running sequencer (`cpr audit keygen
--rotate`): every round it looks at the key file and its verifier-key history, takes the
new key once the history lets it sign, and never signs with a key the history has
retired (SigningRefused): the round seals, and the checkpoint waits for a key that may.
"""

import asyncio
import contextlib
import math
import os
import secrets
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import (
    BigInteger,
    RowMapping,
    String,
    Uuid,
    bindparam,
    func,
    insert,
    literal,
    select,
    text,
    tuple_,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker

from app.audit.chain import (
    EMPTY_HEAD,
    Checkpoint,
    CheckpointError,
    CheckpointSigner,
    SigningRefused,
    default_verifier_keys_path,
    leaf_hash,
    next_head,
)
from app.audit.models import (
    AuditArchive,
    AuditCheckpoint,
    AuditEvent,
    AuditSeal,
    AuditUnsealed,
)
from app.config import Settings
from app.db import READ_ONLY_OPTION, UTCDateTime, utcnow

log = structlog.get_logger()

SEAL_LOCK_KEY = 0x63707273  # "cprs"
# Events hashed between two returns to the event loop (about 2 ms of CPU).
HASH_SLICE = 50
# A round asked for (a checkpoint on demand, shutdown, `cpr audit checkpoint`), unlike
# the background loop's, retries this long while another replica's round goes on.
LOCK_WAIT_SECONDS = 2.0
LOCK_RETRY_SECONDS = 0.02
# Checkpoints copied to the directory per round, oldest first, when it is behind.
COPY_BATCH = 100
# How long a round waits for its copy before sealing on (the copy goes on meanwhile).
COPY_WAIT_SECONDS = 1.0
# How long a round waits for the key files to be looked at (a hung mount holds up only
# the look, which goes on in the background; the key held meanwhile signs, if it may).
KEY_WAIT_SECONDS = 1.0
# Background rounds look at the key files at most this often, and only when a checkpoint
# is due; a checkpoint asked for always looks first.
KEY_LOOK_SECONDS = 1.0


def verifier_keys_path(settings: Settings) -> Path:
    """The checkpoint key's verifier-key history: as configured, else beside the key."""
    configured = settings.checkpoint_verifier_keys_path
    return configured or default_verifier_keys_path(settings.checkpoint_key_path)


@dataclass(frozen=True)
class Sealed:
    count: int
    size: int
    head: bytes
    # Another sequencer held the lock: this round sealed nothing (size and head unknown).
    skipped: bool = False
    # A whole batch was read off the queue: more may be waiting.
    more: bool = False


SKIPPED = Sealed(0, 0, EMPTY_HEAD, skipped=True)
# Batches in one round, one transaction (10,000 events at the default batch of 250).
ROUND_BATCHES = 40


class SealingBusy(TimeoutError):
    """Another sequencer held the sealing lock for all of LOCK_WAIT_SECONDS."""


def _chain(
    events: Sequence[Mapping[Any, Any]], position: int, head: bytes
) -> tuple[list[dict[str, Any]], int, bytes]:
    """The seal rows of ``events``, placed after ``position`` whose head is ``head``."""
    seals = []
    for event in events:
        position += 1
        leaf = leaf_hash(event)
        head = next_head(head, position, leaf)
        seals.append(
            {
                "position": position,
                "event_id": event["id"],
                "leaf_hash": leaf.hex(),
                "chain_hash": head.hex(),
            }
        )
    return seals, position, head


async def seal_pending(session: AsyncSession, *, batch_size: int) -> Sealed | None:
    """Seal up to ``batch_size`` queued events; the caller commits. None: another
    sequencer holds the lock (on PostgreSQL), so this one skips its round rather than
    wait for it (waits are bounded by ``lock_timeout``, and a sequencer that waited
    would fail instead of sealing next round).

    Core statements, and the hashing in slices of HASH_SLICE events with the event
    loop given back between them: the sequencer shares its worker's loop with the
    lookups, and a whole batch is tens of milliseconds of CPU that would stall every
    lookup of the worker. (Not a thread: hashing holds the GIL, and a lookup would
    wait up to the interpreter's switch interval each time it needs it back.)
    """
    connection = await session.connection()
    if connection.dialect.name == "postgresql":
        locked = await connection.scalar(
            text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": SEAL_LOCK_KEY}
        )
        if not locked:
            return None
    last = (
        await connection.execute(
            select(AuditSeal.position, AuditSeal.chain_hash)
            .order_by(AuditSeal.position.desc())
            .limit(1)
        )
    ).first()
    if last is None:
        # Every seal archived (or none yet): the chain goes on from the newest archive.
        last = (
            await connection.execute(
                select(
                    AuditArchive.size.label("position"),
                    AuditArchive.head_hash.label("chain_hash"),
                )
                .order_by(AuditArchive.size.desc())
                .limit(1)
            )
        ).first()
    position, head = (last.position, bytes.fromhex(last.chain_hash)) if last else (0, EMPTY_HEAD)
    pending, more = await _pending(connection, batch_size)
    if pending:
        seals: list[dict[str, Any]] = []
        for start in range(0, len(pending), HASH_SLICE):
            sliced, position, head = _chain(pending[start : start + HASH_SLICE], position, head)
            seals += sliced
            await asyncio.sleep(0)
        # The database takes each sealed event off the queue (audit_seals_dequeue).
        await _insert_seals(connection, seals)
    return Sealed(count=len(pending), size=position, head=head, more=more)


# The queue in chain order (docs/audit-log.md): read from its own index
# (ix_audit_unsealed_occurred_at_event_id, migration 0010), so a batch costs what the
# backlog holds, never what the log holds. The events are then fetched by primary key.
# Two statements rather than a join: sorting on the queue's columns after a join let the
# planner choose to hash the whole log (a full scan of audit_events: 617 ms a batch at
# 2 million events), and whatever the statistics say, neither statement has a plan
# that reads more than the batch.
_QUEUED = select(AuditUnsealed.event_id, AuditUnsealed.occurred_at).order_by(
    AuditUnsealed.occurred_at, AuditUnsealed.event_id
)
_EVENTS = AuditEvent.__table__
# PostgreSQL: one primary-key probe per id. The LIMIT (an id names one event anyway)
# keeps the subquery a probe per id, which the planner cannot turn into a join: even
# ``id = ANY(:ids)`` was read by a full scan of a log that had never been analysed, its
# size misjudged. One array parameter, so the statement is prepared once whatever the
# batch's size. SQLite: the ids expanded into IN (...), each found by the primary key.
_EVENTS_BY_ID_POSTGRESQL = (
    text(
        "SELECT e.* FROM unnest(:event_ids) AS q (id) CROSS JOIN LATERAL "
        "(SELECT * FROM audit_events WHERE audit_events.id = q.id LIMIT 1) AS e"
    )
    .bindparams(bindparam("event_ids", type_=ARRAY(Uuid)))
    .columns(*_EVENTS.columns)
)
_EVENTS_BY_ID = select(_EVENTS).where(_EVENTS.c.id.in_(bindparam("event_ids", expanding=True)))


async def events_by_id(
    connection: AsyncConnection, ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, RowMapping]:
    """The events of ``ids`` (every column), each found by its primary key; an id whose
    event is gone is left out. The sequencer's batch and the verifier's pages alike."""
    if not ids:
        return {}
    by_id = _EVENTS_BY_ID_POSTGRESQL if connection.dialect.name == "postgresql" else _EVENTS_BY_ID
    rows = await connection.execute(by_id, {"event_ids": list(ids)})
    return {row["id"]: row for row in rows.mappings()}


async def _pending(connection: AsyncConnection, batch_size: int) -> tuple[list[RowMapping], bool]:
    """Up to ``batch_size`` queued events in chain order, and whether that was a whole
    batch (more may be waiting). A queue row whose event is gone (only someone going
    around the guards can do that) is passed over, as the join did, and never stops
    sealing: the queue is read on after it."""
    pending: list[RowMapping] = []
    queue = _QUEUED
    while True:
        wanted = batch_size - len(pending)
        queued = (await connection.execute(queue.limit(wanted))).all()
        if not queued:
            return pending, False
        ids = [row.event_id for row in queued]
        events = await events_by_id(connection, ids)
        pending += [events[event_id] for event_id in ids if event_id in events]
        if len(queued) < wanted:
            return pending, False
        if len(pending) == batch_size:
            return pending, True
        last = queued[-1]
        queue = _QUEUED.where(
            tuple_(AuditUnsealed.occurred_at, AuditUnsealed.event_id)
            > tuple_(
                literal(last.occurred_at, AuditUnsealed.occurred_at.type),
                literal(last.event_id, AuditUnsealed.event_id.type),
            )
        )


# PostgreSQL: the whole batch in one statement, one array per column, so that the
# trigger taking sealed events off the queue runs once per batch (it is a statement
# trigger), and the statement is prepared once whatever the batch's size.
_INSERT_SEALS = text(
    "INSERT INTO audit_seals (position, event_id, leaf_hash, chain_hash, sealed_at) "
    "SELECT position, event_id, leaf_hash, chain_hash, :sealed_at "
    "FROM unnest(:positions, :event_ids, :leaf_hashes, :chain_hashes) "
    "AS s (position, event_id, leaf_hash, chain_hash)"
).bindparams(
    bindparam("sealed_at", type_=UTCDateTime()),
    bindparam("positions", type_=ARRAY(BigInteger)),
    bindparam("event_ids", type_=ARRAY(Uuid)),
    bindparam("leaf_hashes", type_=ARRAY(String)),
    bindparam("chain_hashes", type_=ARRAY(String)),
)


async def _insert_seals(connection: AsyncConnection, seals: list[dict[str, Any]]) -> None:
    sealed_at = utcnow()
    if connection.dialect.name == "postgresql":
        await connection.execute(
            _INSERT_SEALS,
            {
                "sealed_at": sealed_at,
                "positions": [seal["position"] for seal in seals],
                "event_ids": [seal["event_id"] for seal in seals],
                "leaf_hashes": [seal["leaf_hash"] for seal in seals],
                "chain_hashes": [seal["chain_hash"] for seal in seals],
            },
        )
        return
    # SQLite: its trigger is per row anyway.
    await connection.execute(
        insert(AuditSeal.__table__), [{**seal, "sealed_at": sealed_at} for seal in seals]
    )


async def sign_checkpoint(
    session: AsyncSession, signer: CheckpointSigner, origin: str, sealed: Sealed
) -> AuditCheckpoint | None:
    """A signed checkpoint for the current size (the existing one if already signed)."""
    if sealed.size == 0:
        return None
    existing = await session.get(AuditCheckpoint, sealed.size)
    if existing is not None:
        return existing
    checkpoint = Checkpoint(
        origin=origin, size=sealed.size, head=sealed.head, signed_at=int(time.time())
    )
    row = AuditCheckpoint(
        size=sealed.size, head_hash=sealed.head.hex(), note=signer.sign(checkpoint)
    )
    session.add(row)
    return row


@dataclass(frozen=True)
class StoredCheckpoint:
    size: int
    signed_at: datetime


async def newest_checkpoint(session: AsyncSession) -> StoredCheckpoint | None:
    """The newest checkpoint stored, by any sequencer: one read of the primary key."""
    row = (
        await session.execute(
            select(AuditCheckpoint.size, AuditCheckpoint.signed_at)
            .order_by(AuditCheckpoint.size.desc())
            .limit(1)
        )
    ).first()
    return None if row is None else StoredCheckpoint(row.size, row.signed_at)


def _write_atomically(path: Path, text: str) -> None:
    """Written aside, flushed to the disk, then renamed into place: a reader sees the
    old file or the new one, and a failed write (a full disk) leaves no debris."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with temporary.open("w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise


def _stated_size(note: str) -> int | None:
    """The size a checkpoint note states (its second line), signature unchecked."""
    lines = note.split("\n")
    try:
        return int(lines[1]) if len(lines) > 1 else None
    except ValueError:
        return None


def publish_checkpoints(directory: Path, checkpoints: Sequence[tuple[int, str]]) -> None:
    """Copy checkpoints ``(size, note)``, oldest first, outside the database: one file
    per size, and ``latest.txt`` for the newest, which is never replaced by an older
    one (another replica may share the directory). Raises OSError when it cannot."""
    if not checkpoints:
        return
    directory.mkdir(parents=True, exist_ok=True)
    for size, note in checkpoints:
        _write_atomically(directory / f"checkpoint-{size:012d}.txt", note)
    size, note = checkpoints[-1]
    latest = directory / "latest.txt"
    try:
        current = _stated_size(latest.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        current = None  # none yet, or unreadable: write it
    if current is None or current < size:
        _write_atomically(latest, note)


def latest_copy(directory: Path) -> str | None:
    """The newest checkpoint copied to ``directory`` (``latest.txt``), unchecked; None if
    there is none. One file: the directory is never listed."""
    try:
        return (directory / "latest.txt").read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError, UnicodeDecodeError):
        return None


def publish_checkpoint(directory: Path, note: str, size: int) -> None:
    """Copy one checkpoint outside the database (see publish_checkpoints)."""
    publish_checkpoints(directory, [(size, note)])


def _retrieve(task: "asyncio.Task[Any]") -> None:
    """A copy nobody waited for to the end: its failure is the next round's to see."""
    if not task.cancelled():
        task.exception()


class Sequencer:
    """Seals every ``sealing_interval_seconds``; signs a checkpoint at most every
    ``checkpoint_interval_seconds`` while there is anything new, and on demand; and
    keeps ``checkpoint_dir`` holding every checkpoint signed.

    Refuses to start (SigningRefused) with a key that its verifier-key history does not
    let sign now; a key the history retires while it runs signs nothing after that."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        signer: CheckpointSigner,
        settings: Settings,
    ) -> None:
        self._sessionmaker = sessionmaker
        # The files as configured, whatever file the signer was first read from.
        signer.follow(settings.checkpoint_key_path, verifier_keys_path(settings))
        refusal = signer.refusal(int(time.time()))
        if refusal is not None:
            raise SigningRefused(f"{refusal}: the sequencer will not sign with it")
        self.signer = signer
        self._settings = settings
        self._key_task: asyncio.Task[None] | None = None
        self._key_looked_at = -math.inf
        self._key_logged_at = -math.inf
        self._last_checkpoint = 0.0
        self._unsigned = True
        # The copies: the newest checkpoint known to be stored (signed here, or seen in
        # the database), the newest known to be in the directory (None until read), and
        # since when (monotonic) the directory has lacked one.
        self._stored = 0
        self._copied: int | None = None
        self._behind_since: float | None = None
        self._looked_at = -math.inf
        self._copy_error: str | None = None
        self._copy_failures = 0
        self._failure_logged_at = -math.inf
        self._copy_task: asyncio.Task[None] | None = None
        self._round = asyncio.Lock()

    async def run_once(
        self, *, checkpoint: bool = False, wait: bool = True
    ) -> tuple[Sealed, AuditCheckpoint | None]:
        """Seal everything queued, in rounds of at most ROUND_BATCHES batches (each its
        own transaction), sign a checkpoint if due (or if ``checkpoint``, once the queue
        is empty), copy what the checkpoint directory lacks.

        While another replica's sequencer holds the sealing lock, the round is
        skipped (SKIPPED) without waiting on the database: at once if not ``wait``
        (the background loop, whose next round comes soon), else after retrying for
        up to LOCK_WAIT_SECONDS, and then, if a checkpoint was asked for, SealingBusy.
        A round of this sequencer's own that is under way is waited for (in memory).
        """
        deadline = time.monotonic() + LOCK_WAIT_SECONDS
        if checkpoint or self._checkpoint_due():
            await self._reload_key(always=checkpoint)  # the key matters only to sign
        total, signed = Sealed(0, 0, EMPTY_HEAD), None
        while True:
            async with self._round:
                outcome = await self._seal(checkpoint=checkpoint)
            if outcome is not None:
                # A round is at most ROUND_BATCHES batches, one transaction: a backlog
                # (after a restart, or millions seeded) is sealed in bounded
                # transactions, each committed, never in one that holds the lock and
                # every seal until the whole queue is done.
                sealed, signed_now = outcome
                total = Sealed(total.count + sealed.count, sealed.size, sealed.head)
                if signed_now is not None:
                    signed = signed_now
                    self._last_checkpoint, self._unsigned = time.monotonic(), False
                if sealed.more:
                    continue
                break
            if not wait:
                break
            if time.monotonic() >= deadline:
                if checkpoint:
                    raise SealingBusy("another sequencer held the sealing lock")
                break
            await asyncio.sleep(LOCK_RETRY_SECONDS)
        if outcome is None and not total.count:
            total = SKIPPED
        await self._copy_checkpoints(signed)
        if total.count:
            log.info("audit_sealed", count=total.count, size=total.size)
        return total, signed

    async def _seal(self, *, checkpoint: bool) -> tuple[Sealed, AuditCheckpoint | None] | None:
        settings = self._settings
        async with self._sessionmaker() as session:
            total = Sealed(0, 0, EMPTY_HEAD)
            for _ in range(ROUND_BATCHES):
                sealed = await seal_pending(session, batch_size=settings.sealing_batch_size)
                if sealed is None:
                    await session.rollback()
                    return None
                total = Sealed(
                    total.count + sealed.count, sealed.size, sealed.head, more=sealed.more
                )
                if not sealed.more:
                    break
            self._unsigned = self._unsigned or total.count > 0
            signed, refused = None, None
            if not checkpoint and self._unsigned and self._checkpoint_due():
                await self._defer_to_stored(session, total.size)
            # Asked for a checkpoint: at the round that leaves the queue empty.
            if (checkpoint and not total.more) or (self._unsigned and self._checkpoint_due()):
                try:
                    signed = await sign_checkpoint(
                        session, self.signer, settings.audit_log_origin, total
                    )
                except SigningRefused as exc:
                    refused = exc  # the seals are committed all the same
            await session.commit()
        if refused is not None:
            self._key_trouble("audit_checkpoint_signing_refused", refused)
            if checkpoint:
                raise refused
        return total, signed

    def _checkpoint_due(self) -> bool:
        """A checkpoint interval has passed since the last one signed (after a refusal,
        every round until one is)."""
        interval = self._settings.checkpoint_interval_seconds
        return time.monotonic() - self._last_checkpoint >= interval

    async def _defer_to_stored(self, session: AsyncSession, size: int) -> None:
        """One checkpoint per interval for the whole service, not per sequencer: under
        the sealing lock, the newest stored checkpoint (whichever replica signed it)
        counts as this one's last. None is due when it already covers ``size`` (the
        head has not moved), nor until the interval has passed since it was signed."""
        newest = await newest_checkpoint(session)
        if newest is None:
            return
        if newest.size >= size:
            self._unsigned = False
        age = (utcnow() - newest.signed_at).total_seconds()
        self._last_checkpoint = max(self._last_checkpoint, time.monotonic() - max(age, 0.0))

    # --- the checkpoint key -------------------------------------------------------------

    async def _reload_key(self, *, always: bool) -> None:
        """Look at the key file and its history (a rotation) before signing, in a thread,
        waiting at most KEY_WAIT_SECONDS; one look at a time."""
        now = time.monotonic()
        if self.signer.key_path is None or (
            not always and now - self._key_looked_at < KEY_LOOK_SECONDS
        ):
            return
        self._key_looked_at = now
        if self._key_task is None or self._key_task.done():
            self._key_task = asyncio.create_task(asyncio.to_thread(self._reload_key_files))
            self._key_task.add_done_callback(_retrieve)
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancel that
        # lands as its timeout fires (all timers fire at once after a freeze).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(KEY_WAIT_SECONDS):
                await asyncio.shield(self._key_task)

    def _reload_key_files(self) -> None:
        try:
            changed = self.signer.reload()
        except (OSError, ValueError) as exc:  # a history that does not verify is a ValueError
            self._key_trouble("audit_checkpoint_key_unreadable", exc)
            return
        if changed:
            log.info(
                "audit_checkpoint_key_loaded",
                verifier_key=self.signer.vkey,
                current=self.signer.vkey == self.signer.verifier.vkey,
            )

    def _key_trouble(self, event: str, exc: Exception) -> None:
        """Said at most once a checkpoint interval while it lasts."""
        now = time.monotonic()
        if now - self._key_logged_at >= self._settings.checkpoint_interval_seconds:
            self._key_logged_at = now
            log.error(event, error_type=type(exc).__name__, detail=str(exc))

    # --- copies outside the database ----------------------------------------------------

    def checkpoint_copy_problem(self, now: float | None = None) -> str | None:
        """Why the checkpoint directory is not to be trusted now, or None: it has
        lacked a signed checkpoint for longer than twice the checkpoint interval.
        Cheap (no I/O): for /readyz. Also when no checkpoint can be signed: the key held
        may no longer sign, and no key that may has been found."""
        refusal = self.signer.refusal(int(time.time()))
        if refusal is not None:
            return f"No audit checkpoint can be signed: {refusal}."
        since = self._behind_since
        if since is None:
            return None
        waited = (time.monotonic() if now is None else now) - since
        if waited <= 2 * self._settings.checkpoint_interval_seconds:
            return None
        cause = f" (copy failed: {self._copy_error})" if self._copy_error else ""
        return (
            f"Signed audit checkpoints have not reached the checkpoint directory "
            f"for {waited:.0f} s{cause}."
        )

    async def _copy_checkpoints(self, signed: AuditCheckpoint | None) -> None:
        """Copy what the directory lacks, waiting at most COPY_WAIT_SECONDS: a
        directory that hangs (a stuck network mount) must not stop the sealing. One
        copy at a time; one still running is waited for again next round."""
        if signed is not None:
            self._stored = max(self._stored, signed.size)
        if self._copy_task is None or self._copy_task.done():
            self._copy_task = asyncio.create_task(self._copy())
            self._copy_task.add_done_callback(_retrieve)
        try:
            async with asyncio.timeout(COPY_WAIT_SECONDS):
                await asyncio.shield(self._copy_task)
        except TimeoutError:
            self._copy_failed(TimeoutError("checkpoint copy still running"), time.monotonic())

    async def _copy(self) -> None:
        """Bring the directory up to the newest stored checkpoint. A failure of the
        directory is logged as such, and retried next round; never raised (a failure
        of the database is)."""
        settings = self._settings
        now = time.monotonic()
        if self._copied is None or now - self._looked_at >= settings.checkpoint_interval_seconds:
            # On start, and now and then: checkpoints signed before a restart, or by
            # another replica, belong in this directory too.
            self._looked_at = now
            self._stored = max(self._stored, await self._newest_stored())
        if self._copied is None or self._stored > self._copied:
            # What the directory holds now (another replica may share it).
            try:
                held = await asyncio.to_thread(self._directory_size)
            except OSError as exc:
                self._copy_failed(exc, now)
                return
            self._copied = max(self._copied or 0, held)
        if self._stored <= self._copied:
            self._caught_up()
            return
        if self._behind_since is None:
            self._behind_since = now
        # From the database, not only what this sequencer signed: another replica's
        # checkpoints, and every one signed while the directory was failing.
        wanted = await self._stored_after(self._copied)
        try:
            await asyncio.to_thread(publish_checkpoints, settings.checkpoint_dir, wanted)
        except Exception as exc:  # the directory, whatever went wrong with it
            self._copy_failed(exc, now)
            return
        if wanted:
            self._copied = max(self._copied, wanted[-1][0])
        if self._stored <= self._copied:
            self._caught_up()

    def _directory_size(self) -> int:
        """The size of the directory's ``latest.txt`` if it verifies; 0 if there is
        none (or one that does not). OSError when the directory cannot be read."""
        try:
            note = (self._settings.checkpoint_dir / "latest.txt").read_text(encoding="utf-8")
        except FileNotFoundError:
            return 0  # a new directory (made at the first copy) or an emptied one
        except UnicodeDecodeError:
            return 0
        try:
            return self.signer.verifier.open(note).size
        except CheckpointError:
            return 0

    async def _newest_stored(self) -> int:
        async with self._sessionmaker() as session:
            await session.connection(execution_options={READ_ONLY_OPTION: True})
            return int(await session.scalar(select(func.max(AuditCheckpoint.size))) or 0)

    async def _stored_after(self, size: int) -> list[tuple[int, str]]:
        async with self._sessionmaker() as session:
            await session.connection(execution_options={READ_ONLY_OPTION: True})
            rows = await session.execute(
                select(AuditCheckpoint.size, AuditCheckpoint.note)
                .where(AuditCheckpoint.size > size)
                .order_by(AuditCheckpoint.size)
                .limit(COPY_BATCH)
            )
            return [(row.size, row.note) for row in rows]

    def _copy_failed(self, exc: BaseException, now: float) -> None:
        if self._behind_since is None and self._stored > (self._copied or 0):
            self._behind_since = now
        self._copy_error = type(exc).__name__
        self._copy_failures += 1
        # Retried every round; said at most once a checkpoint interval.
        if now - self._failure_logged_at >= self._settings.checkpoint_interval_seconds:
            self._failure_logged_at = now
            log.error(
                "audit_checkpoint_copy_failed",
                error_type=self._copy_error,
                errno=getattr(exc, "errno", None),
                size=self._stored,
                copied=self._copied,
                failures=self._copy_failures,
            )

    def _caught_up(self) -> None:
        if self._copy_failures:
            log.info(
                "audit_checkpoint_copy_restored", size=self._copied, failures=self._copy_failures
            )
        self._behind_since, self._copy_error, self._copy_failures = None, None, 0
        self._failure_logged_at = -math.inf

    async def run_forever(self) -> None:
        while True:
            try:
                await self.run_once(wait=False)
            except Exception as exc:  # keep sealing after a passing database fault
                log.error("audit_sealing_failed", error_type=type(exc).__name__)
            await asyncio.sleep(self._settings.sealing_interval_seconds)
