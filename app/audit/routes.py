"""/v1/audit: verify the log, read and request signed checkpoints."""

from typing import Annotated

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel

from app.audit.chain import CheckpointVerifier, SigningRefused
from app.audit.deps import Reviewer, SequencerDep, VerifierDep
from app.audit.models import AuditCheckpoint
from app.audit.verify import newest_checkpoint, verify_served_log
from app.deps import SessionDep, SettingsDep
from app.errors import ProblemError, responses

router = APIRouter(prefix="/v1/audit", tags=["audit"])
# A checkpoint note is some 200 characters; one with a few more signatures fits too.
MAX_NOTE_LENGTH = 4096


class FindingRead(BaseModel):
    kind: str
    detail: str
    position: int | None
    event_id: str | None


class VerifyReport(BaseModel):
    ok: bool
    size: int
    head: str
    checkpoints_checked: int
    # The size of the checkpoint verified from (``since``); 0: the whole log.
    since: int
    # The newest signed checkpoint note the log was found to extend: keep it, and send
    # it as ``since`` next time. None when there is none (or the log does not verify).
    checkpoint: str | None
    findings: list[FindingRead]


class CheckpointRead(BaseModel):
    size: int
    head: str
    note: str
    verifier_key: str


@router.get(
    "/verify",
    response_model=VerifyReport,
    responses=responses("no_checkpoint_key"),
    summary="Recompute every hash and checkpoint signature (or those after a checkpoint held)",
)
async def verify(
    request: Request,
    _reviewer: Reviewer,
    session: SessionDep,
    settings: SettingsDep,
    verifier: VerifierDep,
    since: Annotated[
        str | None,
        Query(
            max_length=MAX_NOTE_LENGTH,
            description="A signed checkpoint note you hold (as GET /v1/audit/checkpoints/"
            "latest gave it): its signature is checked, and that the log still has its "
            "head at its size; then only what was sealed after it is verified. Without "
            "it, the whole log.",
        ),
    ] = None,
) -> VerifyReport:
    result = await verify_served_log(
        session, request.app.state.sessionmaker, settings, verifier, since
    )
    return VerifyReport(
        ok=result.ok,
        size=result.size,
        head=result.head,
        checkpoints_checked=result.checkpoints_checked,
        since=result.since,
        checkpoint=result.newest if result.ok else None,
        findings=[FindingRead(**f.__dict__) for f in result.findings],
    )


@router.get(
    "/checkpoints/latest",
    response_model=CheckpointRead,
    responses=responses("no_checkpoint", "no_checkpoint_key"),
    summary="The newest signed checkpoint",
)
async def latest_checkpoint(
    _reviewer: Reviewer, session: SessionDep, verifier: VerifierDep
) -> CheckpointRead:
    row = await newest_checkpoint(session)
    if row is None:
        raise ProblemError(
            404, "Not found", "No checkpoint has been signed yet.", code="no_checkpoint"
        )
    return _read(row, verifier)


@router.post(
    "/checkpoints",
    response_model=CheckpointRead,
    responses=responses("no_checkpoint", "sealing_off", "signing_refused"),
    summary="Seal what is pending and sign a checkpoint now",
)
async def checkpoint_now(
    _reviewer: Reviewer, session: SessionDep, sequencer: SequencerDep
) -> CheckpointRead:
    await session.commit()  # the sequencer takes the write lock in its own transaction
    try:
        _, signed = await sequencer.run_once(checkpoint=True)
    except SigningRefused as exc:
        raise ProblemError(
            503, "Checkpoint signing refused", str(exc), code="signing_refused"
        ) from exc
    if signed is None:
        raise ProblemError(404, "Not found", "The log is empty.", code="no_checkpoint")
    return _read(signed, sequencer.signer.verifier)


def _read(row: AuditCheckpoint, verifier: CheckpointVerifier) -> CheckpointRead:
    return CheckpointRead(
        size=row.size,
        head=row.head_hash,
        note=row.note,
        verifier_key=verifier.vkey,
    )
