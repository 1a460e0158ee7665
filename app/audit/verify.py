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

Two ways, both reading in pages by position (the seals' and the checkpoints' primary
keys, the events by theirs), so memory is bounded however long the log: ``verify_log``
walks the whole chain; ``verify_since`` starts from a checkpoint the auditor holds,
checks that the log still reaches exactly its head at its size, and walks only what
was sealed after it, in time proportional to that.
"""

import asyncio
import math
import uuid
from collections import deque
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import RowMapping, exists, func, or_, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker

from app.audit.chain import (
    EMPTY_HEAD,
    Checkpoint,
    CheckpointError,
    CheckpointVerifier,
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
from app.audit.sealing import events_by_id, latest_copy
from app.config import Settings
from app.db import READ_ONLY_OPTION

# How far an event's time may run ahead of the database's clock or of the checkpoint
# that covers it: the clocks of the service's hosts and the database's differ a little,
# and a checkpoint's time is whole seconds.
FUTURE_TOLERANCE = timedelta(seconds=60)
# Events named per kind of finding (unsealed, future_dated); the first are what matter.
MAX_LISTED = 100
# Seals (with their events), checkpoints and events read per statement.
PAGE_SIZE = 1000
# Events per id range when counting events against seals and queue (id_ranges).
RANGE_EVENTS = 250_000

# (where it came from, the checkpoint, its note)
Labelled = list[tuple[str, Checkpoint, str]]


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
    # The size of the checkpoint verification started from (0: the whole log).
    since: int = 0
    # The newest signed checkpoint note the chain was found to have (the one held, or
    # a stored one after it): what to start from next time (``verify_since``).
    newest: str | None = None
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
    page_size: int = PAGE_SIZE,
) -> Report:
    """Walk the whole chain; ``held_checkpoints`` are notes kept outside the database.

    Pages of ``page_size`` seals (each page's events by primary key) and checkpoints, so
    memory stays bounded; then the database's clock, the events dated after it (an
    index range), the queue (what waits to be sealed), and counts by id range that say
    whether any event has neither a seal nor a queue row (only there are they looked
    for).
    """
    report = Report()
    connection = await reader(session)
    await _refresh(verifier, report)
    held = _open_held(report, verifier, held_checkpoints)
    size, head = await archived_start(connection, report, verifier)
    report.since = size
    walked = await _walk(
        connection,
        report,
        verifier,
        held,
        size=size,
        head=head,
        page_size=page_size,
        future_tolerance=future_tolerance,
    )
    now = await database_now(session)
    await _future_dated(connection, report, walked, now, future_tolerance)
    await _queued_too_long(connection, report, now, sealing_delay)
    ranges = id_ranges(report.size)
    await _never_queued(
        connection, report, ranges if walked.broken else await _unaccounted(connection, ranges)
    )
    report.findings.extend(walked.future.values())
    return report


async def verify_since(
    session: AsyncSession,
    verifier: CheckpointVerifier,
    since: str,
    *,
    sealing_delay: timedelta,
    held_checkpoints: Sequence[str] = (),
    future_tolerance: timedelta = FUTURE_TOLERANCE,
    page_size: int = PAGE_SIZE,
) -> Report:
    """Verify what was sealed after the checkpoint note ``since`` (one the auditor holds).

    Its signature is checked, then that the seal at its size carries its head (the log
    still extends it; else ``rewritten``, or ``truncated`` if the log is shorter), then
    only the seals after it, as ``verify_log`` does, with the checkpoints stored after
    it. Unsealed and future-dated events are looked for as in the full walk, except
    events with neither seal nor queue row: only those dated after the checkpoint
    (less the sealing delay and the tolerance) are looked at, through the index on
    ``occurred_at``; the full walk finds any other.
    """
    report = Report()
    connection = await reader(session)
    await _refresh(verifier, report)
    try:
        start = verifier.open(since)
    except CheckpointError as exc:
        report.findings.append(Finding(exc.finding, f"the checkpoint held: {exc}"))
        return report
    report.checkpoints_checked += 1
    report.since = report.size = start.size
    report.head = start.head.hex()
    report.newest = since
    held = _open_held(report, verifier, held_checkpoints)
    archived, archived_head = await archived_start(connection, report, verifier)
    if start.size < archived:
        report.findings.append(
            Finding(
                "archived",
                f"the checkpoint held (size {start.size}) is older than the log's archived "
                f"segment (positions up to {archived}): verify the archive files "
                "(--archive), then --since the newest archive's closing checkpoint",
            )
        )
        return report
    if start.size == archived and start.head != archived_head:
        report.findings.append(
            Finding(
                "rewritten",
                f"the log no longer extends the checkpoint held: the archive at size "
                f"{archived} closed with another head",
                position=archived,
            )
        )
        return report
    if start.size > archived and not await extends(connection, report, start, "checkpoint held"):
        return report
    # Held checkpoints no newer than the one started from (of its size too: two signed
    # heads at one size are a fork), and not archived: one read each.
    for size in sorted(s for s in held if s <= start.size):
        for label, checkpoint, _ in held.pop(size):
            if size > archived:
                await extends(connection, report, checkpoint, label)
    walked = await _walk(
        connection,
        report,
        verifier,
        held,
        size=start.size,
        head=start.head,
        page_size=page_size,
        future_tolerance=future_tolerance,
    )
    now = await database_now(session)
    await _future_dated(connection, report, walked, now, future_tolerance)
    await _queued_too_long(connection, report, now, sealing_delay)
    after = datetime.fromtimestamp(start.signed_at, UTC) - sealing_delay - future_tolerance
    await _never_queued_after(connection, report, after, page_size)
    report.findings.extend(walked.future.values())
    return report


async def verify_served_log(
    session: AsyncSession,
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    verifier: CheckpointVerifier,
    since: str | None = None,
) -> Report:
    """The service's own check (GET /v1/audit/verify, the web client's /web/log): the
    whole log, or only what was sealed after the checkpoint note ``since``, with the
    stored checkpoints and the newest copy held in ``checkpoint_dir``.

    The walk reads the log: the request's transaction (``session``; on SQLite it holds
    the write lock) is ended first, and the walk reads in a deferred transaction of its
    own that blocks no lookup."""
    await session.commit()
    latest = latest_copy(settings.checkpoint_dir)
    held = [] if latest is None else [latest]
    delay = timedelta(seconds=settings.sealing_delay_seconds)
    async with sessionmaker() as reader:
        await reader.connection(execution_options={READ_ONLY_OPTION: True})
        if since is None:
            return await verify_log(reader, verifier, sealing_delay=delay, held_checkpoints=held)
        return await verify_since(
            reader, verifier, since, sealing_delay=delay, held_checkpoints=held
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


# --- the walk --------------------------------------------------------------------------------


@dataclass
class _Walked:
    broken: bool = False
    future: dict[str, Finding] = field(default_factory=dict)


async def archived_start(
    connection: AsyncConnection, report: Report, verifier: CheckpointVerifier
) -> tuple[int, bytes]:
    """Where the chain in the database starts: the newest archive's closing size and head
    (its note's signature checked), or position 0 and the empty head."""
    row = (
        await connection.execute(
            select(AuditArchive.size, AuditArchive.head_hash, AuditArchive.note)
            .order_by(AuditArchive.size.desc())
            .limit(1)
        )
    ).first()
    if row is None:
        return 0, EMPTY_HEAD
    label = f"archive closing checkpoint {row.size}"
    opened = _open(report, verifier, label, row.note)
    if opened is not None and (opened.size, opened.head.hex()) != (row.size, row.head_hash):
        report.findings.append(
            Finding("forged_checkpoint", f"{label}: the note does not state this size and head")
        )
    elif opened is not None:
        report.newest = row.note  # until a checkpoint after it is found to match
    return row.size, bytes.fromhex(row.head_hash)


async def reader(session: AsyncSession) -> AsyncConnection:
    """A read that blocks no writer: on SQLite a deferred transaction (in WAL mode one
    snapshot for the whole walk, and no lookup waits for it)."""
    if session.in_transaction():
        return await session.connection()
    return await session.connection(execution_options={READ_ONLY_OPTION: True})


async def _refresh(verifier: CheckpointVerifier, report: Report) -> None:
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


def _open_held(
    report: Report, verifier: CheckpointVerifier, notes: Iterable[str]
) -> dict[int, Labelled]:
    """The notes held outside the database, by size (few: kept in memory)."""
    held: dict[int, Labelled] = {}
    for note in notes:
        opened = _open(report, verifier, "held checkpoint", note)
        if opened is not None:
            held.setdefault(opened.size, []).append(("held checkpoint", opened, note))
    return held


def _open(report: Report, verifier: CheckpointVerifier, label: str, note: str) -> Checkpoint | None:
    try:
        checkpoint = verifier.open(note)
    except CheckpointError as exc:
        report.findings.append(Finding(exc.finding, f"{label}: {exc}"))
        return None
    report.checkpoints_checked += 1
    return checkpoint


async def extends(
    connection: AsyncConnection, report: Report, checkpoint: Checkpoint, label: str
) -> bool:
    """Whether the stored chain has, at the checkpoint's size, the checkpoint's head:
    one read of the seals' primary key (and, if there is no such seal, of its end)."""
    if checkpoint.size == 0:
        return True
    stored = await connection.scalar(
        select(AuditSeal.chain_hash).where(AuditSeal.position == checkpoint.size)
    )
    if stored is None:
        sealed = await connection.scalar(select(func.max(AuditSeal.position))) or 0
        report.findings.append(
            Finding(
                "truncated",
                f"the {label} covers {checkpoint.size} events but the log has only {sealed}: "
                "events were removed from the tail (or the checkpoint is not this log's)",
                position=sealed + 1,
            )
        )
        return False
    if stored != checkpoint.head.hex():
        report.findings.append(
            Finding(
                "rewritten",
                f"the log no longer extends the {label}: at size {checkpoint.size} its head "
                "is not the one the checkpoint signed (history was rewritten)",
                position=checkpoint.size,
            )
        )
        return False
    return True


async def _stored_checkpoints(
    connection: AsyncConnection,
    report: Report,
    verifier: CheckpointVerifier,
    held: dict[int, Labelled],
    *,
    after: int,
    page_size: int,
) -> AsyncIterator[tuple[int, Labelled]]:
    """Every checkpoint after size ``after``, stored (read in pages by size, each
    signature checked as it is read) or held, grouped by size, smallest first."""
    waiting = deque(sorted((s, labelled) for s, labelled in held.items() if s > after))
    last = after
    while True:
        rows = (
            await connection.execute(
                select(AuditCheckpoint.size, AuditCheckpoint.note)
                .where(AuditCheckpoint.size > last)
                .order_by(AuditCheckpoint.size)
                .limit(page_size)
            )
        ).all()
        for row in rows:
            while waiting and waiting[0][0] < row.size:
                yield waiting.popleft()
            group = waiting.popleft()[1] if waiting and waiting[0][0] == row.size else []
            label = f"stored checkpoint {row.size}"
            opened = _open(report, verifier, label, row.note)
            if opened is not None and opened.size != row.size:
                report.findings.append(
                    Finding(
                        "forged_checkpoint",
                        f"{label}: the note states size {opened.size}, not {row.size}",
                    )
                )
            elif opened is not None:
                group = [(label, opened, row.note), *group]
            if group:
                yield row.size, group
        if len(rows) < page_size:
            break
        last = rows[-1].size
    while waiting:
        yield waiting.popleft()


async def seal_pages(
    connection: AsyncConnection, *, after: int, page_size: int
) -> AsyncIterator[list[tuple[Any, RowMapping | None]]]:
    """The seals after position ``after`` in order, ``page_size`` at a time, each with its
    event (None if it is gone): a range of the seals' primary key, then the page's
    events by theirs, as the sequencer reads them."""
    last = after
    while True:
        seals = (
            await connection.execute(
                select(
                    AuditSeal.position,
                    AuditSeal.event_id,
                    AuditSeal.leaf_hash,
                    AuditSeal.chain_hash,
                )
                .where(AuditSeal.position > last)
                .order_by(AuditSeal.position)
                .limit(page_size)
            )
        ).all()
        if not seals:
            return
        events = await events_by_id(connection, list({seal.event_id for seal in seals}))
        yield [(seal, events.get(seal.event_id)) for seal in seals]
        if len(seals) < page_size:
            return
        last = seals[-1].position


async def _walk(
    connection: AsyncConnection,
    report: Report,
    verifier: CheckpointVerifier,
    held: dict[int, Labelled],
    *,
    size: int,
    head: bytes,
    page_size: int,
    future_tolerance: timedelta,
) -> _Walked:
    """Recompute every leaf and head after position ``size`` (whose head is ``head``),
    checking each checkpoint after it at its size, and each event's date against the
    first checkpoint that covers it."""
    walked = _Walked()
    checkpoints = _stored_checkpoints(
        connection, report, verifier, held, after=size, page_size=page_size
    )
    upcoming = await anext(checkpoints, None)
    expected = size + 1
    async for page in seal_pages(connection, after=size, page_size=page_size):
        for seal, event in page:
            finding = check_seal(seal, event, expected, head)
            if finding is not None:
                report.findings.append(finding)
                walked.broken = True
                break
            assert event is not None  # _check said so
            head = bytes.fromhex(seal.chain_hash)
            while upcoming is not None and upcoming[0] < seal.position:
                upcoming = await anext(checkpoints, None)
            if upcoming is not None:
                _dated_after(walked, seal.position, event, upcoming, future_tolerance)
                if upcoming[0] == seal.position:
                    for label, checkpoint, note in upcoming[1]:
                        if checkpoint.head != head:
                            report.findings.append(
                                Finding(
                                    "rewritten",
                                    f"the log at size {seal.position} no longer matches the "
                                    f"{label}: history was rewritten",
                                    position=seal.position,
                                )
                            )
                        else:
                            report.newest = note
            expected += 1
        if walked.broken:
            break
    report.size, report.head = expected - 1, head.hex()

    # Checkpoints beyond where the chain verifies: the first says the tail is gone; the
    # rest are still read, for their signatures.
    while upcoming is not None:
        if upcoming[0] > report.size and not walked.broken:
            for label, _, _ in upcoming[1]:
                report.findings.append(
                    Finding(
                        "truncated",
                        f"the {label} covers {upcoming[0]} events but the log verifies only "
                        f"{report.size}: events were removed from the tail",
                        position=report.size + 1,
                    )
                )
            walked.broken = True
        upcoming = await anext(checkpoints, None)
    return walked


def _dated_after(
    walked: _Walked,
    position: int,
    event: RowMapping,
    covering: tuple[int, Labelled],
    tolerance: timedelta,
) -> None:
    """Every event a checkpoint covers was written before it was signed."""
    if len(walked.future) >= MAX_LISTED:
        return
    size, labelled = covering
    signed = datetime.fromtimestamp(min(c.signed_at for _, c, _ in labelled), UTC)
    if event["occurred_at"] > signed + tolerance:
        event_id = str(event["id"])
        walked.future[event_id] = Finding(
            "future_dated",
            f"the event is dated {event['occurred_at'].isoformat()}, after the checkpoint "
            f"at size {size} that covers it was signed ({signed.isoformat()})",
            position=position,
            event_id=event_id,
        )


# --- what the walk cannot see: events dated ahead, and events without a seal ----------------


async def _future_dated(
    connection: AsyncConnection,
    report: Report,
    walked: _Walked,
    now: datetime,
    tolerance: timedelta,
) -> None:
    """Events dated after the database's clock: a range of the index on occurred_at."""
    ahead = await connection.execute(
        select(AuditEvent.id, AuditEvent.occurred_at, AuditSeal.position)
        .outerjoin(AuditSeal, AuditSeal.event_id == AuditEvent.id)
        .where(AuditEvent.occurred_at > now + tolerance)
        .order_by(AuditEvent.occurred_at.desc())
        .limit(MAX_LISTED)
    )
    for row in ahead:
        walked.future.setdefault(
            str(row.id),
            Finding(
                "future_dated",
                f"the event is dated {row.occurred_at.isoformat()}, after the database's "
                f"clock ({now.isoformat()})",
                position=row.position,
                event_id=str(row.id),
            ),
        )


async def _queued_too_long(
    connection: AsyncConnection, report: Report, now: datetime, delay: timedelta
) -> None:
    """Queue rows older than the delay, by the database's clock: the queue holds only
    what waits to be sealed, so this reads the backlog, never the log."""
    rows = await connection.execute(
        select(AuditUnsealed.event_id, AuditUnsealed.queued_at)
        .where(
            AuditUnsealed.queued_at < now - delay,
            exists().where(AuditEvent.id == AuditUnsealed.event_id),
        )
        .order_by(AuditUnsealed.occurred_at, AuditUnsealed.event_id)
        .limit(MAX_LISTED)
    )
    report.findings.extend(
        Finding(
            "unsealed",
            f"event queued at {row.queued_at.isoformat()} and still not sealed: the "
            "sequencer stopped or cannot keep up",
            event_id=str(row.event_id),
        )
        for row in rows
    )


def _not_queued(event_id: uuid.UUID) -> Finding:
    return Finding(
        "unsealed",
        "event never sealed and no longer queued for sealing: its queue entry was "
        "removed, or it was written around the sequencer",
        event_id=str(event_id),
    )


def id_ranges(size: int) -> list[tuple[uuid.UUID, uuid.UUID | None]]:
    """The event ids split by their leading bits into ranges of about RANGE_EVENTS
    events (ids are random), so that no statement counts or searches the whole log: each
    stays well within the statement timeout however long the log grows."""
    bits = max(0, min(16, math.ceil(math.log2(max(size, 1) / RANGE_EVENTS))))
    count = 1 << bits
    step = 1 << (128 - bits)
    return [
        (uuid.UUID(int=n * step), None if n == count - 1 else uuid.UUID(int=(n + 1) * step))
        for n in range(count)
    ]


def _in_range(column: Any, low: uuid.UUID, high: uuid.UUID | None) -> Any:
    return column >= low if high is None else (column >= low) & (column < high)


async def _unaccounted(
    connection: AsyncConnection, ranges: Sequence[tuple[uuid.UUID, uuid.UUID | None]]
) -> list[tuple[uuid.UUID, uuid.UUID | None]]:
    """The id ranges holding more events than sealed and queued ones. One statement a
    range, so one snapshot: an event is written with its queue row (a trigger), and
    sealing moves it from the queue to the seals in one transaction. Counting reads
    index ranges, never a join of the log; the events are looked for only where the
    counts disagree."""
    uneven = []
    for low, high in ranges:
        events = (
            select(func.count())
            .select_from(AuditEvent)
            .where(_in_range(AuditEvent.id, low, high))
            .scalar_subquery()
        )
        sealed = (
            select(func.count())
            .select_from(AuditSeal)
            .where(_in_range(AuditSeal.event_id, low, high))
            .scalar_subquery()
        )
        queued = (
            select(func.count())
            .select_from(AuditUnsealed)
            .where(
                _in_range(AuditUnsealed.event_id, low, high),
                exists().where(AuditEvent.id == AuditUnsealed.event_id),
            )
            .scalar_subquery()
        )
        row = (await connection.execute(select(events, sealed, queued))).one()
        if row[0] > row[1] + row[2]:
            uneven.append((low, high))
    return uneven


async def _never_queued(
    connection: AsyncConnection,
    report: Report,
    ranges: Sequence[tuple[uuid.UUID, uuid.UUID | None]],
) -> None:
    """The events with neither a seal nor a queue row, among the id ranges given (those
    whose counts disagree, or all when the chain is broken already)."""
    found = 0
    for low, high in ranges:
        rows = await connection.execute(
            select(AuditEvent.id)
            .where(
                _in_range(AuditEvent.id, low, high),
                ~exists().where(AuditSeal.event_id == AuditEvent.id),
                ~exists().where(AuditUnsealed.event_id == AuditEvent.id),
            )
            .order_by(AuditEvent.id)
            .limit(MAX_LISTED - found)
        )
        named = [_not_queued(row.id) for row in rows]
        report.findings.extend(named)
        found += len(named)
        if found >= MAX_LISTED:
            return


async def _never_queued_after(
    connection: AsyncConnection, report: Report, after: datetime, page_size: int
) -> None:
    """As _never_queued, for the events dated after ``after`` only: pages of the index on
    occurred_at, each page's ids then looked up in the seals and the queue."""
    last: tuple[datetime, uuid.UUID] | None = None
    found = 0
    while found < MAX_LISTED:
        page = select(AuditEvent.occurred_at, AuditEvent.id).where(
            AuditEvent.occurred_at >= (after if last is None else last[0])
        )
        if last is not None:
            page = page.where(
                or_(
                    AuditEvent.occurred_at > last[0],
                    (AuditEvent.occurred_at == last[0]) & (AuditEvent.id > last[1]),
                )
            )
        ordered = page.order_by(AuditEvent.occurred_at, AuditEvent.id).limit(page_size)
        rows = (await connection.execute(ordered)).all()
        if not rows:
            return
        ids = [row.id for row in rows]
        accounted = set(
            await connection.scalars(select(AuditSeal.event_id).where(AuditSeal.event_id.in_(ids)))
        ) | set(
            await connection.scalars(
                select(AuditUnsealed.event_id).where(AuditUnsealed.event_id.in_(ids))
            )
        )
        for event_id in ids:
            if event_id not in accounted and found < MAX_LISTED:
                report.findings.append(_not_queued(event_id))
                found += 1
        if len(rows) < page_size:
            return
        last = (rows[-1].occurred_at, rows[-1].id)


def check_seal(seal: Any, event: RowMapping | None, expected: int, head: bytes) -> Finding | None:
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
    leaf = leaf_hash(cast(Mapping[str, Any], event))
    if leaf.hex() != seal.leaf_hash:
        return Finding(
            "altered",
            "the event differs from what was sealed at this position "
            "(changed, or swapped with another)",
            position=seal.position,
            event_id=str(event["id"]),
        )
    if next_head(head, seal.position, leaf).hex() != seal.chain_hash:
        return Finding(
            "reordered",
            "the chain breaks here: an event was inserted, moved or its seal rewritten",
            position=seal.position,
            event_id=str(event["id"]),
        )
    return None
