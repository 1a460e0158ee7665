"""/v1/audit: verify the log, read and request signed checkpoints."""

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel
from sqlalchemy import select

from app.admin.models import OrganisationKind, Scope
from app.audit.chain import CheckpointVerifier, SigningRefused
from app.audit.models import AuditCheckpoint
from app.audit.sealing import Sequencer, latest_copy
from app.audit.verify import verify_log, verify_since
from app.auth.principals import Principal, SettingsDep, require_scope
from app.db import READ_ONLY_OPTION, SessionDep
from app.errors import ProblemError, responses

router = APIRouter(prefix="/v1/audit", tags=["audit"])
# A checkpoint note is some 200 characters; one with a few more signatures fits too.
MAX_NOTE_LENGTH = 4096


# Custodians verify the log over the API; the operator uses `cpr audit verify`.
admit_reviewer = require_scope(
    Scope.audit_read,
    kinds=frozenset({OrganisationKind.local_authority}),
    event_type="audit.refused",
    kind_refusal="not_custodian",
)
Reviewer = Annotated[Principal, Depends(admit_reviewer)]


async def get_sequencer(request: Request) -> Sequencer:
    sequencer: Sequencer | None = request.app.state.sequencer
    if sequencer is None:
        # Production seals in `cpr worker`, which signs a checkpoint every few seconds
        # while there is anything new: GET /v1/audit/checkpoints/latest has it.
        raise ProblemError(
            503,
            "Sealing is off",
            "This instance runs no sequencer: checkpoints are signed by the worker.",
            code="sealing_off",
        )
    return sequencer


SequencerDep = Annotated[Sequencer, Depends(get_sequencer)]


async def get_checkpoint_verifier(request: Request) -> CheckpointVerifier:
    verifier: CheckpointVerifier | None = request.app.state.checkpoint_verifier
    if verifier is None:
        raise ProblemError(
            503,
            "No checkpoint key",
            "This instance holds no key to verify checkpoints with.",
            code="no_checkpoint_key",
        )
    return verifier


VerifierDep = Annotated[CheckpointVerifier, Depends(get_checkpoint_verifier)]


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
    # The walk reads the log: end the request's transaction (on SQLite it holds the
    # write lock) and read in a deferred transaction that blocks no lookup.
    await session.commit()
    latest = latest_copy(settings.checkpoint_dir)
    held = [] if latest is None else [latest]
    delay = timedelta(seconds=settings.sealing_delay_seconds)
    async with request.app.state.sessionmaker() as reader:
        await reader.connection(execution_options={READ_ONLY_OPTION: True})
        if since is None:
            result = await verify_log(reader, verifier, sealing_delay=delay, held_checkpoints=held)
        else:
            result = await verify_since(
                reader, verifier, since, sealing_delay=delay, held_checkpoints=held
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
    row = await session.scalar(
        select(AuditCheckpoint).order_by(AuditCheckpoint.size.desc()).limit(1)
    )
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
