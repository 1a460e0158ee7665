"""POST /v1/lookups: is this child on a plan, and under which category?

The route only reads the request; the checks, the audit event and the answer are
app/lookup/service.py's, shared with the FHIR operation and the web client.
"""

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel

from app.auth.principals import Principal, bearer_token, require_scope
from app.deps import SettingsDep
from app.errors import responses
from app.identity.models import REFERENCE_POINT_KINDS, Scope
from app.lookup.purposes import offered
from app.lookup.schemas import LookupAnswer
from app.lookup.service import REFUSALS, answer_enquiry

router = APIRouter(tags=["lookup"])

_REASON = "attended with unexplained bruising"
_EXAMPLES = {
    "system_client": {
        "summary": "A hospital system, naming the member of staff who asked",
        "value": {
            "subject": {"nhs_number": "9434765919"},
            "purpose": "safeguarding_concern",
            "reason": _REASON,
            "enquirer": {"id": "C123456", "name": "Dr A Jones", "role": "ED registrar"},
        },
    },
    "signed_in_user": {
        "summary": "A duty officer's own token: the user is the enquirer",
        "value": {
            "subject": {
                "given_name": "Amara",
                "family_name": "Quinn-Lowe",
                "date_of_birth": "2019-04-02",
            },
            "purpose": "safeguarding_concern",
            "reason": _REASON,
        },
    },
}


@router.post(
    "/v1/lookups",
    response_model=LookupAnswer,
    response_model_exclude_none=True,
    responses=responses(*REFUSALS),
    summary="Look a child up",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {"$ref": "#/components/schemas/LookupRequest"},
                    "examples": _EXAMPLES,
                }
            },
        },
        # Checked in answer_enquiry, not by a dependency that app/openapi.py could see.
        "security": [{"oauth2": ["register:lookup"]}, {"bearer": []}],
    },
)
async def lookup(request: Request) -> Response:
    # No FastAPI dependencies: the caller, its volume counts and the enquiry are read
    # in answer_enquiry, on one pooled connection, in as few statements as the checks
    # allow. The body is parsed there too, so that a malformed enquiry from an
    # identified caller is refused *and audited*.
    token = bearer_token(request)
    # An enquiry is JSON, said so: a body sent as anything else is refused (415), not
    # guessed at. The whole body is read before a database connection is taken: a
    # caller that sends it slowly, or never, must not hold one of the pool's.
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    body = await request.body() if media_type == "application/json" else None
    answer = await answer_enquiry(request, token, body)
    return Response(answer.model_dump_json(exclude_none=True), media_type="application/json")


_reference_point = require_scope(
    Scope.lookup,
    kinds=REFERENCE_POINT_KINDS,
    event_type="lookup.refused",
    kind_refusal="not_a_reference_point",
)
ReferencePoint = Annotated[Principal, Depends(_reference_point)]


class PurposeRead(BaseModel):
    code: str
    label: str


class PurposesRead(BaseModel):
    """What an enquiry from this caller may give as its purpose."""

    organisation_kind: str
    purposes: list[PurposeRead]
    default: str | None


@router.get(
    "/v1/lookups/purposes",
    response_model=PurposesRead,
    summary="The purposes your kind of organisation may give, your own first",
)
async def purposes(caller: ReferencePoint, settings: SettingsDep) -> PurposesRead:
    # Read-only and about the caller alone: no child, so no audit event (a refusal is).
    kind = caller.organisation_kind.value
    allowed, default = offered(kind, settings)
    return PurposesRead(
        organisation_kind=kind,
        purposes=[PurposeRead(code=code, label=label) for code, label in allowed],
        default=default or None,
    )
