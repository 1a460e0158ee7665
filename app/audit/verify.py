"""The verifier: recompute every leaf, every head and every checkpoint signature.

It names the first event that was altered, removed, reordered or inserted,
every checkpoint that is forged or that the log no longer extends, every event
left unsealed past the sealing delay (measured from when the database queued it,
not from the event's own ``occurred_at``) or never queued at all, and every event
dated in the future: later than the database's clock, or later than the signed
time of the first checkpoint that covers it.

Each checkpoint is checked with the key that signed it, from the checkpoint key's
verifier-key history, and only if it was signed (the time inside the signed note) while
that key was valid: a checkpoint signed by a retired key after its retirement is
``retired_key``, one by a key the history does not name ``forged_checkpoint``.
"""

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import or_, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.audit.chain import (
    EMPTY_HEAD,
    Checkpoint,
    CheckpointError,
    CheckpointVerifier,
    leaf_hash,
    next_head,
)
from app.audit.models import AuditCheckpoint, AuditEvent, AuditSeal, AuditUnsealed
from app.config import Settings
from app.db import READ_ONLY_OPTION

# How far an event's time may run ahead of the database's clock or of the checkpoint
# that covers it: the clocks of the service's hosts and the database's differ a little,
# and a checkpoint's time is whole seconds.
FUTURE_TOLERANCE = timedelta(seconds=60)
# Events named per kind of finding (unsealed, future_dated); the first are what matter.
MAX_LISTED = 100


@dataclass(frozen=True)
class Finding:
    kind: str
    detail: str
    position: int | None = None
    event_id: str | None = None


@dataclass
class Report:
    size: int = 0
    head: str = EMPTY_HEAD.hex()
    checkpoints_checked: int = 0
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings


async def verify_log(
    session: AsyncSession,
    verifier: CheckpointVerifier,
    *,
    sealing_delay: timedelta,
    held_checkpoints: Sequence[str] = (),
    future_tolerance: timedelta = FUTURE_TOLERANCE,
) -> Report:
    """Walk the whole chain; ``held_checkpoints`` are notes kept outside the database.

    A handful of statements whatever the log's size: the checkpoints, the walk of
    every seal with its event, the database's clock, the events dated after it, and
    the events without a seal; nothing is read per event.
    """
    report = Report()
    try:
        # A history bound to its file is read again if it changed: a rotation since.
        await asyncio.to_thread(verifier.refresh)
    except (OSError, ValueError) as exc:
        report.findings.append(
            Finding(
                "verifier_keys_unreadable",
                f"the verifier-key history cannot be read again ({exc}); checked with the "
                "keys read before",
            )
        )
    wanted = _checkpoints(
        report,
        verifier,
        [
            (f"stored checkpoint {row.size}", row.note)
            for row in await session.scalars(select(AuditCheckpoint))
        ],
        [("held checkpoint", note) for note in held_checkpoints],
    )

    # For each checkpoint size, the earliest time it was signed: every event it covers
    # was written before then.
    covering = sorted(
        (size, datetime.fromtimestamp(min(c.signed_at for _, c in labelled), UTC))
        for size, labelled in wanted.items()
    )
    cover = 0
    future: dict[str, Finding] = {}

    expected, head = 1, EMPTY_HEAD
    rows = await session.stream(
        select(AuditSeal, AuditEvent)
        .outerjoin(AuditEvent, AuditEvent.id == AuditSeal.event_id)
        .order_by(AuditSeal.position)
        .execution_options(yield_per=1000)
    )
    async for seal, event in rows:
        finding = _check(seal, event, expected, head)
        if finding is not None:
            report.findings.append(finding)
            break
        head = bytes.fromhex(seal.chain_hash)
        while cover < len(covering) and covering[cover][0] < seal.position:
            cover += 1
        if cover < len(covering) and len(future) < MAX_LISTED:
            size, signed = covering[cover]
            if event.occurred_at > signed + future_tolerance:
                future[str(event.id)] = Finding(
                    "future_dated",
                    f"the event is dated {event.occurred_at.isoformat()}, after the checkpoint "
                    f"at size {size} that covers it was signed ({signed.isoformat()})",
                    position=seal.position,
                    event_id=str(event.id),
                )
        for label, checkpoint in wanted.get(seal.position, ()):
            if checkpoint.head != head:
                report.findings.append(
                    Finding(
                        "rewritten",
                        f"the log at size {seal.position} no longer matches the {label}: "
                        "history was rewritten",
                        position=seal.position,
                    )
                )
        expected += 1
    await rows.close()
    report.size, report.head = expected - 1, head.hex()

    for size, labelled in sorted(wanted.items()):
        if size > report.size and not report.findings:
            for label, _ in labelled:
                report.findings.append(
                    Finding(
                        "truncated",
                        f"the {label} covers {size} events but the log verifies only "
                        f"{report.size}: events were removed from the tail",
                        position=report.size + 1,
                    )
                )

    now = await database_now(session)
    ahead = await session.execute(
        select(AuditEvent.id, AuditEvent.occurred_at, AuditSeal.position)
        .outerjoin(AuditSeal, AuditSeal.event_id == AuditEvent.id)
        .where(AuditEvent.occurred_at > now + future_tolerance)
        .order_by(AuditEvent.occurred_at.desc())
        .limit(MAX_LISTED)
    )
    for row in ahead:
        future.setdefault(
            str(row.id),
            Finding(
                "future_dated",
                f"the event is dated {row.occurred_at.isoformat()}, after the database's "
                f"clock ({now.isoformat()})",
                position=row.position,
                event_id=str(row.id),
            ),
        )

    # Unsealed: queued longer ago than the delay, by the database's clock; or not
    # queued at all, which only sealing may end (or someone who went around the guards).
    unsealed = await session.execute(
        select(AuditEvent.id, AuditUnsealed.queued_at)
        .outerjoin(AuditSeal, AuditSeal.event_id == AuditEvent.id)
        .outerjoin(AuditUnsealed, AuditUnsealed.event_id == AuditEvent.id)
        .where(
            AuditSeal.position.is_(None),
            or_(
                AuditUnsealed.event_id.is_(None),
                AuditUnsealed.queued_at < now - sealing_delay,
            ),
        )
        .order_by(AuditEvent.occurred_at)
        .limit(MAX_LISTED)
    )
    report.findings.extend(
        Finding(
            "unsealed",
            "event never sealed and no longer queued for sealing: its queue entry was "
            "removed, or it was written around the sequencer"
            if row.queued_at is None
            else f"event queued at {row.queued_at.isoformat()} and still not sealed: the "
            "sequencer stopped or cannot keep up",
            event_id=str(row.id),
        )
        for row in unsealed
    )
    report.findings.extend(future.values())
    return report


async def verify_served_log(
    session: AsyncSession,
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    verifier: CheckpointVerifier,
) -> Report:
    """The service's own check (GET /v1/audit/verify, the web client's /web/log): the
    whole log, the stored checkpoints and the newest one held in ``checkpoint_dir``.

    The walk reads the whole log: the request's transaction (``session``; on SQLite it
    holds the write lock) is ended first, and the walk reads in a deferred transaction
    of its own that blocks no lookup."""
    await session.commit()
    held = sorted(settings.checkpoint_dir.glob("checkpoint-*.txt"))[-1:]
    async with sessionmaker() as reader:
        await reader.connection(execution_options={READ_ONLY_OPTION: True})
        return await verify_log(
            reader,
            verifier,
            sealing_delay=timedelta(seconds=settings.sealing_delay_seconds),
            held_checkpoints=[path.read_text() for path in held],
        )


async def newest_checkpoint(session: AsyncSession) -> AuditCheckpoint | None:
    """The newest signed checkpoint, or None before the first."""
    return await session.scalar(
        select(AuditCheckpoint).order_by(AuditCheckpoint.size.desc()).limit(1)
    )


async def database_now(session: AsyncSession) -> datetime:
    """The database's clock (not this host's), in UTC."""
    connection = await session.connection()
    if connection.dialect.name == "postgresql":
        value = await session.scalar(text("SELECT clock_timestamp()"))
        return value.astimezone(UTC)
    value = await session.scalar(text("SELECT strftime('%Y-%m-%d %H:%M:%f', 'now')"))
    return datetime.fromisoformat(value).replace(tzinfo=UTC)


def _checkpoints(
    report: Report, verifier: CheckpointVerifier, *sources: list[tuple[str, str]]
) -> dict[int, list[tuple[str, Checkpoint]]]:
    wanted: dict[int, list[tuple[str, Checkpoint]]] = {}
    for source in sources:
        for label, note in source:
            try:
                checkpoint = verifier.open(note)
            except CheckpointError as exc:
                report.findings.append(Finding(exc.finding, f"{label}: {exc}"))
                continue
            report.checkpoints_checked += 1
            wanted.setdefault(checkpoint.size, []).append((label, checkpoint))
    return wanted


def _check(seal: AuditSeal, event: AuditEvent | None, expected: int, head: bytes) -> Finding | None:
    if seal.position != expected:
        return Finding(
            "removed",
            f"positions {expected} to {seal.position - 1} are missing: events were deleted",
            position=expected,
        )
    if event is None:
        return Finding(
            "removed",
            "the sealed event was deleted",
            position=seal.position,
            event_id=str(seal.event_id),
        )
    leaf = leaf_hash(event)
    if leaf.hex() != seal.leaf_hash:
        return Finding(
            "altered",
            "the event differs from what was sealed at this position "
            "(changed, or swapped with another)",
            position=seal.position,
            event_id=str(event.id),
        )
    if next_head(head, seal.position, leaf).hex() != seal.chain_hash:
        return Finding(
            "reordered",
            "the chain breaks here: an event was inserted, moved or its seal rewritten",
            position=seal.position,
            event_id=str(event.id),
        )
    return None
