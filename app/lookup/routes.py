"""POST /v1/lookups: is this child on a plan, and under which category?

Every enquiry from an identified caller, answered or refused, is one audit
event committed before the response leaves.
"""

import uuid
from datetime import date
from typing import Any

from fastapi import APIRouter, Request
from pydantic import ValidationError

from app.admin.models import REFERENCE_POINT_KINDS, Scope
from app.audit.models import AuditEvent
from app.audit.service import commit_or_fail_closed, refuse, request_context
from app.auth.principals import CurrentPrincipal, Principal, SettingsDep
from app.config import Settings
from app.db import SessionDep
from app.errors import ProblemError, responses, safe_validation_errors
from app.lookup.limits import check_volume
from app.lookup.schemas import Contact, LookupAnswer, LookupRequest
from app.register.identifiers import normalise_name
from app.register.matching import Decision, Status, SubjectQuery, decide, find_candidates

router = APIRouter(tags=["lookup"])


@router.post(
    "/v1/lookups",
    response_model=LookupAnswer,
    response_model_exclude_none=True,
    responses=responses(401, 403, 413, 422, 429, 503),
    summary="Look a child up",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/LookupRequest"}}
            },
        }
    },
)
async def lookup(
    request: Request, principal: CurrentPrincipal, session: SessionDep, settings: SettingsDep
) -> LookupAnswer:
    # The body is parsed here, not by FastAPI, so that a malformed enquiry from
    # an identified caller is refused *and audited*.
    event = AuditEvent(
        id=uuid.uuid4(),
        event_type="lookup",
        principal=principal.subject,
        organisation_id=principal.organisation_id,
        outcome="refused",
        **request_context(request),
    )
    if principal.organisation_kind not in REFERENCE_POINT_KINDS:
        event.refusal = "not_a_reference_point"
        await refuse(
            session,
            event,
            ProblemError(
                403, "Forbidden", "Only reference points (A&E, out-of-hours, police) may look up."
            ),
        )
    if Scope.lookup not in principal.scopes:
        event.refusal = "missing_scope"
        await refuse(
            session,
            event,
            ProblemError(403, "Forbidden", "The token does not carry the register:lookup scope."),
        )

    try:
        command = LookupRequest.model_validate_json(await request.body())
    except ValidationError as exc:
        errors = safe_validation_errors(exc.errors())
        event.refusal = "invalid_request"
        event.detail = {"errors": errors}
        await refuse(session, event, ProblemError(422, "Invalid request", errors=errors))

    event.purpose = command.purpose.value
    event.reason = command.reason
    query = _subject_query(command)
    event.query = query.for_audit()
    event.enquirer = _enquirer(principal, command, event)
    if event.enquirer is None:
        await refuse(session, event, ProblemError(422, "Invalid request", _ENQUIRER_RULE))
    event.enquirer_id = event.enquirer["id"]
    if command.purpose.value not in settings.purposes_by_kind.get(principal.organisation_kind, ()):
        event.refusal = "purpose_not_allowed"
        await refuse(
            session,
            event,
            ProblemError(
                403,
                "Forbidden",
                f"Purpose {command.purpose.value!r} is not allowed for "
                f"{principal.organisation_kind.value.replace('_', ' ')} enquirers.",
            ),
        )

    over = await check_volume(
        session, settings, principal=principal.subject, enquirer_id=event.enquirer_id
    )
    if over is not None:
        event.refusal = over.refusal
        await refuse(
            session,
            event,
            ProblemError(
                429,
                "Too many lookups",
                "The volume limit for this enquirer or system has been reached; "
                "the custodians have been alerted.",
                headers={"Retry-After": str(over.retry_after_seconds)},
            ),
        )

    decision = decide(query, await find_candidates(session, query, date.today()))
    answer = _answer(event.id, decision, settings)
    _record_answer(event, decision, answer)
    session.add(event)
    await commit_or_fail_closed(session)
    return answer


_ENQUIRER_RULE = (
    "A system client must name the member of staff who asked (enquirer id, name, role); "
    "a signed-in user is the enquirer and must not name another."
)


def _enquirer(
    principal: Principal, command: LookupRequest, event: AuditEvent
) -> dict[str, Any] | None:
    if principal.kind == "client":
        if command.enquirer is None:
            event.refusal = "enquirer_required"
            return None
        return command.enquirer.model_dump()
    if command.enquirer is not None:
        event.refusal = "enquirer_not_allowed"
        return None
    return {"id": principal.subject, "name": principal.display_name, "role": principal.role}


def _subject_query(command: LookupRequest) -> SubjectQuery:
    subject = command.subject
    return SubjectQuery(
        nhs_number=subject.nhs_number,
        given_name=normalise_name(subject.given_name) if subject.given_name else None,
        family_name=normalise_name(subject.family_name) if subject.family_name else None,
        date_of_birth=subject.date_of_birth,
    )


def _answer(lookup_id: uuid.UUID, decision: Decision, settings: Settings) -> LookupAnswer:
    authority = decision.authority
    if decision.status is Status.not_on_plan or authority is None:
        contact = Contact(name=settings.duty_contact_name, phone=settings.duty_contact_phone)
    else:
        contact = Contact(
            name=authority.authority_contact_name, phone=authority.authority_contact_phone
        )
    if decision.status is Status.on_plan:
        entry = decision.candidates[0]
        return LookupAnswer(
            lookup_id=lookup_id,
            status=decision.status.value,
            categories=list(entry.categories),
            unborn=entry.unborn,
            contact=contact,
        )
    return LookupAnswer(lookup_id=lookup_id, status=decision.status.value, contact=contact)


def _record_answer(event: AuditEvent, decision: Decision, answer: LookupAnswer) -> None:
    event.outcome = decision.status.value
    event.disclosed = answer.model_dump(mode="json", exclude={"lookup_id"}, exclude_none=True)
    if decision.authority is not None:
        event.authority_id = decision.authority.authority_id
    if decision.status is Status.on_plan:
        event.entry_id = decision.candidates[0].entry_id
        event.entry_version = decision.candidates[0].version
    if decision.candidates:
        event.detail = {
            "matched": [
                {
                    "entry_id": str(c.entry_id),
                    "version": c.version,
                    "authority_id": str(c.authority_id),
                }
                for c in decision.candidates
            ]
        }
