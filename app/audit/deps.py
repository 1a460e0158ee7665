"""What the audit routes ask for: a custodian reviewer, the sequencer, the verifier.

Shared by every route module that reads the log (review, alerts, notifications,
webhooks, FHIR, the web client), so none of them imports another's routes.
"""

from typing import Annotated

from fastapi import Depends, Request

from app.audit.chain import CheckpointVerifier
from app.audit.sealing import Sequencer
from app.auth.principals import Principal, require_scope
from app.errors import ProblemError
from app.identity.models import OrganisationKind, Scope

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
