"""/v1/audit: verify the log, read and request signed checkpoints."""

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel
from sqlalchemy import select

from app.admin.models import Scope
from app.audit.models import AuditCheckpoint, AuditEvent
from app.audit.sealing import Sequencer
from app.audit.service import refuse, request_context
from app.audit.verify import verify_log
from app.auth.principals import CurrentPrincipal, Principal, SettingsDep
from app.db import READ_ONLY_OPTION, SessionDep
from app.errors import ProblemError, responses

router = APIRouter(prefix="/v1/audit", tags=["audit"])


async def _reviewer(
    request: Request, principal: CurrentPrincipal, session: SessionDep
) -> Principal:
    """Custodians (audit:read) and the operator (admin) may verify the log."""
    if not principal.scopes & {Scope.audit_read, Scope.admin}:
        event = AuditEvent(
            event_type="audit.refused",
            principal=principal.subject,
            organisation_id=principal.organisation_id,
            refusal="missing_scope",
            outcome="refused",
            **request_context(request),
        )
        await refuse(
            session,
            event,
            ProblemError(403, "Forbidden", "The token carries neither audit:read nor admin."),
        )
    return principal


Reviewer = Annotated[Principal, Depends(_reviewer)]


def get_sequencer(request: Request) -> Sequencer:
    sequencer: Sequencer | None = request.app.state.sequencer
    if sequencer is None:
        raise ProblemError(503, "Sealing is off", "This instance runs no sequencer.")
    return sequencer


SequencerDep = Annotated[Sequencer, Depends(get_sequencer)]


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
    findings: list[FindingRead]


class CheckpointRead(BaseModel):
    size: int
    head: str
    note: str
    verifier_key: str


@router.get(
    "/verify",
    response_model=VerifyReport,
    responses=responses(401, 403, 503),
    summary="Recompute every hash and checkpoint signature",
)
async def verify(
    _reviewer: Reviewer, session: SessionDep, settings: SettingsDep, sequencer: SequencerDep
) -> VerifyReport:
    await session.connection(execution_options={READ_ONLY_OPTION: True})
    held = sorted(settings.checkpoint_dir.glob("checkpoint-*.txt"))[-1:]
    result = await verify_log(
        session,
        sequencer.signer.verifier,
        sealing_delay=timedelta(seconds=settings.sealing_delay_seconds),
        held_checkpoints=[path.read_text() for path in held],
    )
    return VerifyReport(
        ok=result.ok,
        size=result.size,
        head=result.head,
        checkpoints_checked=result.checkpoints_checked,
        findings=[FindingRead(**f.__dict__) for f in result.findings],
    )


@router.get(
    "/checkpoints/latest",
    response_model=CheckpointRead,
    responses=responses(401, 403, 404, 503),
    summary="The newest signed checkpoint",
)
async def latest_checkpoint(
    _reviewer: Reviewer, session: SessionDep, sequencer: SequencerDep
) -> CheckpointRead:
    row = await session.scalar(
        select(AuditCheckpoint).order_by(AuditCheckpoint.size.desc()).limit(1)
    )
    if row is None:
        raise ProblemError(404, "Not found", "No checkpoint has been signed yet.")
    return _read(row, sequencer)


@router.post(
    "/checkpoints",
    response_model=CheckpointRead,
    responses=responses(401, 403, 404, 503),
    summary="Seal what is pending and sign a checkpoint now",
)
async def checkpoint_now(_reviewer: Reviewer, sequencer: SequencerDep) -> CheckpointRead:
    _, signed = await sequencer.run_once(checkpoint=True)
    if signed is None:
        raise ProblemError(404, "Not found", "The log is empty.")
    return _read(signed, sequencer)


def _read(row: AuditCheckpoint, sequencer: Sequencer) -> CheckpointRead:
    return CheckpointRead(
        size=row.size,
        head=row.head_hash,
        note=row.note,
        verifier_key=sequencer.signer.verifier.vkey,
    )
