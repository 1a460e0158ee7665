"""The sequencer: seals queued events into the hash chain and signs checkpoints.

A lookup's transaction only inserts its event (a trigger queues it). Sealing
runs apart, in batches, under one lock (a PostgreSQL advisory lock; on SQLite
the write lock): positions are gap-free and never forked however many
replicas run a sequencer, and no lookup waits on another lookup's sealing.
"""

import asyncio
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import delete, insert, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.audit.chain import EMPTY_HEAD, Checkpoint, CheckpointSigner, leaf_hash, next_head
from app.audit.models import AuditCheckpoint, AuditEvent, AuditSeal, AuditUnsealed
from app.config import Settings

log = structlog.get_logger()

SEAL_LOCK_KEY = 0x63707273  # "cprs"
# Events hashed between two returns to the event loop (about 2 ms of CPU).
HASH_SLICE = 50


@dataclass(frozen=True)
class Sealed:
    count: int
    size: int
    head: bytes


def _chain(
    events: Sequence[Mapping[str, Any]], position: int, head: bytes
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


async def seal_pending(session: AsyncSession, *, batch_size: int) -> Sealed:
    """Seal up to ``batch_size`` queued events; the caller commits.

    Core statements, and the hashing in slices of HASH_SLICE events with the event
    loop given back between them: the sequencer shares its worker's loop with the
    lookups, and a whole batch is tens of milliseconds of CPU that would stall every
    lookup of the worker. (Not a thread: hashing holds the GIL, and a lookup would
    wait up to the interpreter's switch interval each time it needs it back.)
    """
    connection = await session.connection()
    if connection.dialect.name == "postgresql":
        await connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SEAL_LOCK_KEY})
    last = (
        await connection.execute(
            select(AuditSeal.position, AuditSeal.chain_hash)
            .order_by(AuditSeal.position.desc())
            .limit(1)
        )
    ).first()
    position, head = (last.position, bytes.fromhex(last.chain_hash)) if last else (0, EMPTY_HEAD)
    events = AuditEvent.__table__
    pending = (
        (
            await connection.execute(
                select(events)
                .join(AuditUnsealed.__table__, AuditUnsealed.event_id == events.c.id)
                .order_by(AuditUnsealed.occurred_at, AuditUnsealed.event_id)
                .limit(batch_size)
            )
        )
        .mappings()
        .all()
    )
    if pending:
        seals: list[dict[str, Any]] = []
        for start in range(0, len(pending), HASH_SLICE):
            sliced, position, head = _chain(pending[start : start + HASH_SLICE], position, head)
            seals += sliced
            await asyncio.sleep(0)
        await connection.execute(insert(AuditSeal.__table__), seals)
        await connection.execute(
            delete(AuditUnsealed.__table__).where(
                AuditUnsealed.event_id.in_([event["id"] for event in pending])
            )
        )
    return Sealed(count=len(pending), size=position, head=head)


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


def publish_checkpoint(directory: Path, note: str, size: int) -> None:
    """Copy a checkpoint outside the database: one file per size, plus ``latest``."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in (f"checkpoint-{size:012d}.txt", "latest.txt"):
        temporary = directory / f".{name}.tmp"
        temporary.write_text(note)
        os.replace(temporary, directory / name)


class Sequencer:
    """Seals every ``sealing_interval_seconds``; signs a checkpoint at most every
    ``checkpoint_interval_seconds`` while there is anything new, and on demand."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        signer: CheckpointSigner,
        settings: Settings,
    ) -> None:
        self._sessionmaker = sessionmaker
        self.signer = signer
        self._settings = settings
        self._last_checkpoint = 0.0
        self._unsigned = True

    async def run_once(self, *, checkpoint: bool = False) -> tuple[Sealed, AuditCheckpoint | None]:
        settings = self._settings
        async with self._sessionmaker() as session:
            total = Sealed(0, 0, EMPTY_HEAD)
            while True:
                sealed = await seal_pending(session, batch_size=settings.sealing_batch_size)
                total = Sealed(total.count + sealed.count, sealed.size, sealed.head)
                if sealed.count < settings.sealing_batch_size:
                    break
            self._unsigned = self._unsigned or total.count > 0
            due = time.monotonic() - self._last_checkpoint >= settings.checkpoint_interval_seconds
            signed = None
            if checkpoint or (self._unsigned and due):
                signed = await sign_checkpoint(
                    session, self.signer, settings.audit_log_origin, total
                )
            await session.commit()
        if signed is not None:
            self._last_checkpoint, self._unsigned = time.monotonic(), False
            await asyncio.to_thread(
                publish_checkpoint, settings.checkpoint_dir, signed.note, signed.size
            )
        if total.count:
            log.info("audit_sealed", count=total.count, size=total.size)
        return total, signed

    async def run_forever(self) -> None:
        while True:
            try:
                await self.run_once()
            except Exception as exc:  # keep sealing after a passing database fault
                log.error("audit_sealing_failed", error_type=type(exc).__name__)
            await asyncio.sleep(self._settings.sealing_interval_seconds)
