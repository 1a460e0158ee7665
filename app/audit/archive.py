"""A closed segment of the log in a file that verifies on its own (docs/audit-log.md,
"Retention"): every event after the last segment archived (or from the first) up to a
signed checkpoint, in the canonical form its leaf was
hashed over, with its seal, and the checkpoint note that closes it.

JSON Lines, UTF-8. The first line says what the file is::

    {"format": "cp-register audit archive v1", "from_size": S, "from_head": "…",
     "opening": "<the note that closed the segment before, or null>",
     "to_size": N, "closing": "<the checkpoint note>"}

then one line per position, in order::

    {"position": 1, "event": "<RFC 8785 JSON of the event>", "leaf_hash": "…",
     "chain_hash": "…"}

Verifying it needs the verifier-key history (public keys) and nothing else: every leaf
and head is recomputed from the lines, and the last head must be the one the closing
checkpoint signed, at its size. Writing it reads the log in pages, as the verifier does,
and refuses to write a segment whose chain does not verify up to that checkpoint.
"""

import hashlib
import json
import os
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, cast

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from app.audit.chain import (
    EMPTY_HEAD,
    Checkpoint,
    CheckpointError,
    CheckpointVerifier,
    canonical_event,
    next_head,
)
from app.audit.models import AuditArchive, AuditEvent, AuditEventAuthority, AuditSeal
from app.audit.verify import (
    FUTURE_TOLERANCE,
    PAGE_SIZE,
    Finding,
    Report,
    archived_start,
    check_seal,
    extends,
    reader,
    seal_pages,
)
from app.notifications.models import Notification, NotificationDelivery

ARCHIVE_FORMAT = "cp-register audit archive v1"
ARCHIVED = "audit.archived"
ARCHIVE_DELETED = "audit.archive_deleted"


class ArchiveRefused(Exception):
    """The segment was not written: the checkpoint or the chain up to it does not verify."""

    def __init__(self, finding: Finding) -> None:
        super().__init__(f"{finding.kind}: {finding.detail}")
        self.finding = finding


@dataclass(frozen=True)
class Archived:
    from_size: int
    size: int
    head: str
    sha256: str
    closing: str
    # The newest occurred_at among the events written (None: none written).
    last_occurred_at: datetime | None


async def write_archive(
    session: AsyncSession,
    verifier: CheckpointVerifier,
    closing: str,
    path: Path,
    *,
    page_size: int = PAGE_SIZE,
) -> Archived:
    """Write positions 1 to the closing checkpoint's size to ``path`` (made exclusively,
    written aside and renamed into place), each seal checked as it is written."""
    try:
        checkpoint = verifier.open(closing)
    except CheckpointError as exc:
        raise ArchiveRefused(Finding(exc.finding, f"the closing checkpoint: {exc}")) from exc
    connection = await reader(session)
    report = Report()
    start, head = await archived_start(connection, report, verifier)
    opening = await _opening(connection)
    if report.findings:
        raise ArchiveRefused(report.findings[0])
    if checkpoint.size <= start:
        raise ArchiveRefused(Finding("archived", f"positions up to {start} are archived already"))
    if not await extends(connection, report, checkpoint, "closing checkpoint"):
        raise ArchiveRefused(report.findings[0])
    aside = path.with_name(f".{path.name}.{os.getpid()}.partial")
    digest = hashlib.sha256()
    newest: datetime | None = None
    try:
        with aside.open("x", encoding="utf-8") as file:
            _line(file, digest, _header(start, head, opening, checkpoint, closing))
            expected = start + 1
            async for page in seal_pages(connection, after=start, page_size=page_size):
                for seal, event in page:
                    if seal.position > checkpoint.size:
                        break
                    finding = check_seal(seal, event, expected, head)
                    if finding is not None:
                        raise ArchiveRefused(finding)
                    assert event is not None  # check_seal said so
                    head = bytes.fromhex(seal.chain_hash)
                    newest = max(newest or event["occurred_at"], event["occurred_at"])
                    line = {
                        "position": seal.position,
                        "event": canonical_event(cast(Mapping[str, Any], event)).decode("utf-8"),
                        "leaf_hash": seal.leaf_hash,
                        "chain_hash": seal.chain_hash,
                    }
                    _line(file, digest, line)
                    expected += 1
                if expected > checkpoint.size:
                    break
            if expected - 1 != checkpoint.size or head != checkpoint.head:
                raise ArchiveRefused(
                    Finding(
                        "rewritten",
                        f"the chain at size {checkpoint.size} does not have the closing "
                        "checkpoint's head",
                        position=checkpoint.size,
                    )
                )
            file.flush()
            os.fsync(file.fileno())
        os.link(aside, path)  # never over another file: FileExistsError
    finally:
        aside.unlink(missing_ok=True)
    return Archived(
        start, checkpoint.size, checkpoint.head.hex(), digest.hexdigest(), closing, newest
    )


async def _opening(connection: AsyncConnection) -> str | None:
    """The newest archive's closing note: the next segment's opening."""
    return await connection.scalar(
        select(AuditArchive.note).order_by(AuditArchive.size.desc()).limit(1)
    )


async def delete_archived(
    session: AsyncSession, archived: Archived, *, page_size: int = PAGE_SIZE
) -> int:
    """Record the segment as archived, then delete it: its seals, its events, and what
    names them (their authorities' rows, their notifications and those notifications'
    webhook deliveries). As the schema owner: the database's guards let only rows the
    newest archive covers go (migration 0013), and the application role has no DELETE
    on the log at all. One transaction, which the caller commits. The number deleted."""
    if archived.last_occurred_at is None:
        return 0
    session.add(
        AuditArchive(
            size=archived.size,
            head_hash=archived.head,
            note=archived.closing,
            sha256=archived.sha256,
            last_occurred_at=archived.last_occurred_at,
        )
    )
    await session.flush()
    deleted, last = 0, archived.from_size
    while last < archived.size:
        rows = (
            await session.execute(
                select(AuditSeal.position, AuditSeal.event_id)
                .where(AuditSeal.position > last, AuditSeal.position <= archived.size)
                .order_by(AuditSeal.position)
                .limit(page_size)
            )
        ).all()
        if not rows:
            break
        ids = [row.event_id for row in rows]
        told = select(Notification.id).where(Notification.event_id.in_(ids))
        await session.execute(
            delete(NotificationDelivery).where(NotificationDelivery.notification_id.in_(told))
        )
        await session.execute(delete(Notification).where(Notification.event_id.in_(ids)))
        await session.execute(
            delete(AuditSeal).where(
                AuditSeal.position > last, AuditSeal.position <= rows[-1].position
            )
        )
        await session.execute(
            delete(AuditEventAuthority).where(AuditEventAuthority.event_id.in_(ids))
        )
        await session.execute(delete(AuditEvent).where(AuditEvent.id.in_(ids)))
        deleted += len(ids)
        last = rows[-1].position
    return deleted


def archived_event(
    archived: Archived, path: Path, actor: str, *, deleted: int | None = None
) -> AuditEvent:
    """What the log records of a segment written out, and deleted if it was (never the
    events themselves)."""
    return AuditEvent(
        event_type=ARCHIVED if deleted is None else ARCHIVE_DELETED,
        principal=actor,
        outcome="ok",
        detail={
            "from_size": archived.from_size,
            "to_size": archived.size,
            "head": archived.head,
            "sha256": archived.sha256,
            "file": path.name[:200],
            **({} if deleted is None else {"deleted": deleted}),
        },
    )


def _header(
    start: int, head: bytes, opening: str | None, checkpoint: Checkpoint, closing: str
) -> dict[str, Any]:
    return {
        "format": ARCHIVE_FORMAT,
        "from_size": start,
        "from_head": head.hex(),
        "opening": opening,
        "to_size": checkpoint.size,
        "closing": closing,
    }


def _line(file: IO[str], digest: Any, value: dict[str, Any]) -> None:
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":")) + "\n"
    digest.update(text.encode("utf-8"))
    file.write(text)


def verify_archive(path: Path, verifier: CheckpointVerifier) -> Report:
    """Recompute every leaf and head of the file; the last must be the closing
    checkpoint's, at its size. No database: the file and the public keys only."""
    report = Report()
    try:
        with path.open(encoding="utf-8") as file:
            _verify_lines(report, verifier, _records(file))
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        report.findings.append(Finding("malformed_archive", f"{path.name}: {exc}"))
    return report


def _records(file: IO[str]) -> Iterator[dict[str, Any]]:
    for line in file:
        value = json.loads(line)
        if not isinstance(value, dict):
            raise ValueError("a line is not a JSON object")
        yield value


def _verify_lines(
    report: Report, verifier: CheckpointVerifier, records: Iterator[dict[str, Any]]
) -> None:
    header = next(records, None)
    if header is None or header.get("format") != ARCHIVE_FORMAT:
        raise ValueError("not a cp-register audit archive")
    try:
        closing = verifier.open(header["closing"])
    except CheckpointError as exc:
        report.findings.append(Finding(exc.finding, f"the closing checkpoint: {exc}"))
        return
    report.checkpoints_checked += 1
    report.newest = header["closing"]
    start, head = int(header["from_size"]), bytes.fromhex(header["from_head"])
    if closing.size != int(header["to_size"]) or (start == 0 and head != EMPTY_HEAD):
        raise ValueError("the header disagrees with its closing checkpoint")
    if start > 0:
        # A later segment opens with the checkpoint that closed the one before it.
        if header.get("opening") is None:
            raise ValueError("a segment after the first names no opening checkpoint")
        try:
            opening = verifier.open(header["opening"])
        except CheckpointError as exc:
            report.findings.append(Finding(exc.finding, f"the opening checkpoint: {exc}"))
            return
        report.checkpoints_checked += 1
        if (opening.size, opening.head) != (start, head):
            raise ValueError("the header disagrees with its opening checkpoint")
    report.since = start
    signed = datetime.fromtimestamp(closing.signed_at, UTC)
    expected = start + 1
    for record in records:
        position, event = int(record["position"]), str(record["event"])
        if position != expected:
            report.findings.append(
                Finding("removed", f"the file skips from {expected - 1} to {position}", position)
            )
            return
        leaf = hashlib.sha256(b"\x00" + event.encode("utf-8")).digest()
        fields = json.loads(event)
        if leaf.hex() != record["leaf_hash"]:
            report.findings.append(
                Finding("altered", "the event differs from what was sealed", position, fields["id"])
            )
            return
        head = next_head(head, position, leaf)
        if head.hex() != record["chain_hash"]:
            report.findings.append(
                Finding("reordered", "the chain breaks here", position, fields["id"])
            )
            return
        occurred = datetime.fromisoformat(fields["occurred_at"])
        if occurred > signed + FUTURE_TOLERANCE:
            report.findings.append(
                Finding(
                    "future_dated",
                    f"the event is dated {occurred.isoformat()}, after the closing "
                    f"checkpoint was signed ({signed.isoformat()})",
                    position,
                    str(uuid.UUID(fields["id"])),
                )
            )
        expected += 1
    report.size, report.head = expected - 1, head.hex()
    if report.size != closing.size:
        report.findings.append(
            Finding(
                "truncated",
                f"the closing checkpoint covers {closing.size} events but the file holds "
                f"{report.size}",
                position=report.size + 1,
            )
        )
    elif head != closing.head:
        report.findings.append(
            Finding(
                "rewritten",
                "the file's chain does not end at the closing checkpoint's head",
                closing.size,
            )
        )
