"""The verifier: recompute every leaf, every head and every checkpoint signature.

It names the first event that was altered, removed, reordered or inserted,
every checkpoint that is forged or that the log no longer extends, and every
event left unsealed past the sealing delay.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit.chain import (
    EMPTY_HEAD,
    Checkpoint,
    CheckpointError,
    CheckpointVerifier,
    leaf_hash,
    next_head,
)
from app.audit.models import AuditCheckpoint, AuditEvent, AuditSeal
from app.db import utcnow


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
) -> Report:
    """Walk the whole chain; ``held_checkpoints`` are notes kept outside the database."""
    report = Report()
    wanted = _checkpoints(
        report,
        verifier,
        [
            (f"stored checkpoint {row.size}", row.note)
            for row in await session.scalars(select(AuditCheckpoint))
        ],
        [("held checkpoint", note) for note in held_checkpoints],
    )

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

    cutoff = utcnow() - sealing_delay
    unsealed = await session.scalars(
        select(AuditEvent.id)
        .outerjoin(AuditSeal, AuditSeal.event_id == AuditEvent.id)
        .where(AuditSeal.position.is_(None), AuditEvent.occurred_at < cutoff)
        .order_by(AuditEvent.occurred_at)
        .limit(100)
    )
    report.findings.extend(
        Finding(
            "unsealed",
            "event never sealed: inserted around the sequencer, or it stopped",
            event_id=str(event_id),
        )
        for event_id in unsealed
    )
    return report


def _checkpoints(
    report: Report, verifier: CheckpointVerifier, *sources: list[tuple[str, str]]
) -> dict[int, list[tuple[str, Checkpoint]]]:
    wanted: dict[int, list[tuple[str, Checkpoint]]] = {}
    for source in sources:
        for label, note in source:
            try:
                checkpoint = verifier.open(note)
            except CheckpointError as exc:
                report.findings.append(Finding("forged_checkpoint", f"{label}: {exc}"))
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
