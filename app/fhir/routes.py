"""/fhir/R4: the lookup as `Patient/$cp-lookup`, refusals as OperationOutcome, the
custodians' enquiries as AuditEvent. Each route translates, then calls what the JSON
API calls: ``answer_enquiry`` for the lookup, app/audit/review.py's ``search_page`` for the log."""

import json
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, time, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Form, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit.deps import Reviewer
from app.audit.review import EnquirySearch, search_page
from app.auth.principals import Principal, bearer_token
from app.deps import SessionDep
from app.errors import PROBLEMS, ProblemError, responses, safe_validation_errors
from app.fhir import resources
from app.fhir.resources import FHIR_MEDIA_TYPE
from app.fhir.schemas import NHS_NUMBER_SYSTEM, PARAMETER_OF, lookup_body
from app.lookup.service import REFUSALS, answer_enquiry

CHANNEL = "fhir"
_FHIR_CONTENT: dict[str, Any] = {FHIR_MEDIA_TYPE: {"schema": {"type": "object"}}}


def _ok(description: str) -> dict[int | str, dict[str, Any]]:
    return {200: {"content": _FHIR_CONTENT, "description": description}}


_ACCEPTED = {FHIR_MEDIA_TYPE, "application/json"}


def fhir_response(resource: dict[str, Any], status: int = 200, **headers: str) -> Response:
    return Response(
        json.dumps(resource, ensure_ascii=False),
        status_code=status,
        media_type=FHIR_MEDIA_TYPE,
        headers=headers or None,
    )


_ROOT = {
    "resourceType": "resourceType",
    "Parameters": "Parameters",
    "parameter": "Parameters.parameter",
}


def _expression(loc: list[str]) -> str | None:
    """The FHIRPath of the Parameters parameter that a LookupRequest error is about."""
    parts = tuple(part for part in loc if part != "body")
    name = (
        PARAMETER_OF.get(parts[:2]) or PARAMETER_OF.get(parts[:1]) or (parts[0] if parts else None)
    )
    if name is None:
        return None
    if name in _ROOT:  # the resource itself is not a Parameters
        return _ROOT[name]
    if "." in name:
        outer, inner = name.split(".", 1)
        return f"Parameters.parameter.where(name='{outer}').part.where(name='{inner}')"
    return f"Parameters.parameter.where(name='{name}')"


def outcome_for(problem: ProblemError) -> Response:
    errors = None
    if problem.errors:
        errors = [
            {"msg": error.get("msg"), "expression": _expression(error.get("loc", []))}
            for error in problem.errors
        ]
    body = resources.operation_outcome(
        problem.code, problem.status, problem.title, problem.detail, errors
    )
    return fhir_response(body, problem.status, **(problem.headers or {}))


class FhirRoute(APIRoute):
    """Every refusal of these routes, from a dependency or the handler, is an
    OperationOutcome with the JSON API's code and status."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except ProblemError as problem:
                return outcome_for(problem)
            except RequestValidationError as exc:
                errors = safe_validation_errors(exc.errors())
                invalid = ProblemError(422, "Invalid request", code="invalid_request")
                body = resources.operation_outcome(
                    invalid.code,
                    422,
                    invalid.title,
                    None,
                    [{"msg": e["msg"], "expression": ".".join(e["loc"][1:])} for e in errors],
                )
                return fhir_response(body, 422)

        return handle


router = APIRouter(prefix="/fhir/R4", tags=["fhir"], route_class=FhirRoute)


@router.get(
    "/metadata",
    response_class=Response,
    responses={200: {"content": _FHIR_CONTENT, "description": "The CapabilityStatement."}},
    summary="FHIR CapabilityStatement (public)",
)
async def metadata(request: Request) -> Response:
    base = str(request.base_url).rstrip("/")
    return fhir_response(resources.capability_statement(base, request.app.version))


@router.get(
    "/CodeSystem/{code_system_id}",
    response_class=Response,
    responses=_ok("A CodeSystem.") | responses("not_found"),
    summary="The service's own CodeSystems: cp-category, cp-lookup, cp-problem (public)",
)
async def code_system(code_system_id: str) -> Response:
    found = resources.CODE_SYSTEMS.get(code_system_id)
    if found is None:
        raise ProblemError(404, PROBLEMS["not_found"].title, "No such CodeSystem.")
    return fhir_response(found)


@router.get(
    "/OperationDefinition/Patient-cp-lookup",
    response_class=Response,
    responses={200: {"content": _FHIR_CONTENT, "description": "The OperationDefinition."}},
    summary="The $cp-lookup operation's definition (public)",
)
async def operation_definition() -> Response:
    return fhir_response(resources.OPERATION_DEFINITION)


@router.post(
    "/Patient/$cp-lookup",
    response_class=Response,
    responses=_ok("A Bundle: the need-to-know answer.") | responses(*REFUSALS),
    summary="Look a child up (FHIR Parameters in, Bundle out)",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                FHIR_MEDIA_TYPE: {"schema": {"type": "object"}},
                "application/json": {"schema": {"type": "object"}},
            },
        },
        # Checked in answer_enquiry, as for POST /v1/lookups.
        "security": [{"oauth2": ["register:lookup"]}, {"bearer": []}],
    },
)
async def cp_lookup(request: Request) -> Response:
    token = bearer_token(request)
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    body: bytes | None = None
    channel: dict[str, Any] = {"channel": CHANNEL}
    if media_type in _ACCEPTED:
        raw = await request.body()
        try:
            document = json.loads(raw)
        except ValueError:
            body = raw  # refused by the lookup as malformed JSON, and audited
        else:
            translated, detail = lookup_body(document)
            channel |= detail
            body = json.dumps(translated).encode()
    answer = await answer_enquiry(request, token, body, channel=channel)
    return fhir_response(resources.lookup_bundle(answer))


_DATE_PREFIXES = ("ge", "gt", "le", "lt", "eq")


def _period(dates: list[str]) -> dict[str, datetime]:
    """`date` search parameters as the review's from (inclusive) / to (exclusive)."""
    period: dict[str, datetime] = {}
    for raw in dates:
        prefix, text = (raw[:2], raw[2:]) if raw[:2] in _DATE_PREFIXES else ("eq", raw)
        try:
            if len(text) == 10:
                start = datetime.combine(datetime.fromisoformat(text).date(), time(), UTC)
                end = start + timedelta(days=1)
            else:
                start = datetime.fromisoformat(text)
                if start.tzinfo is None:
                    raise ValueError
                end = start + timedelta(microseconds=1)
        except ValueError as exc:
            error = {"loc": ["date"], "msg": "give a date or a datetime with its offset"}
            raise ProblemError(
                422, "Invalid request", code="invalid_request", errors=[error]
            ) from exc
        if prefix in ("ge", "eq"):
            period["from"] = start
        if prefix == "gt":
            period["from"] = end
        if prefix in ("lt",):
            period["to"] = start
        if prefix in ("le", "eq"):
            period["to"] = end
    return period


_SEARCHSET: dict[int | str, dict[str, Any]] = {
    200: {"content": _FHIR_CONTENT, "description": "A searchset Bundle of AuditEvent."}
}


@router.get(
    "/AuditEvent",
    response_class=Response,
    responses=_SEARCHSET,
    summary="Enquiries about your authority's children, as FHIR AuditEvent (custodians)",
    description="Searches by date only: a child's NHS number never travels in a URL (it "
    "would reach access logs on the way), so `patient.identifier` is refused here with "
    "422; send it to `POST /fhir/R4/AuditEvent/_search`.",
)
async def search_audit_events(
    request: Request,
    reviewer: Reviewer,
    session: SessionDep,
    patient_identifier: Annotated[
        str | None, Query(alias="patient.identifier", max_length=80)
    ] = None,
    date: Annotated[list[str] | None, Query(max_length=2)] = None,
    count: Annotated[int, Query(alias="_count", ge=1, le=500)] = 100,
    cursor: Annotated[str | None, Query(alias="_cursor", max_length=400)] = None,
) -> Response:
    if patient_identifier is not None:
        error = {
            "loc": ["query", "patient.identifier"],
            "msg": "a child's identifier never travels in a URL: POST it to "
            "/fhir/R4/AuditEvent/_search",
        }
        raise ProblemError(422, "Invalid request", code="invalid_request", errors=[error])
    return await _search(request, reviewer, session, None, date, count, cursor)


@router.post(
    "/AuditEvent/_search",
    response_class=Response,
    responses=_SEARCHSET,
    summary="The same search, its parameters in a form body (FHIR's POST search)",
)
async def search_audit_events_by_post(
    request: Request,
    reviewer: Reviewer,
    session: SessionDep,
    patient_identifier: Annotated[
        str | None, Form(alias="patient.identifier", max_length=80)
    ] = None,
    date: Annotated[list[str] | None, Form(max_length=2)] = None,
    count: Annotated[int, Form(alias="_count", ge=1, le=500)] = 100,
    cursor: Annotated[str | None, Form(alias="_cursor", max_length=400)] = None,
    next_page: Annotated[
        str | None,
        Query(
            alias="_cursor",
            max_length=400,
            description="As in the `next` link: POST the same form to it for the next page.",
        ),
    ] = None,
) -> Response:
    cursor = next_page or cursor
    return await _search(request, reviewer, session, patient_identifier, date, count, cursor)


async def _search(
    request: Request,
    reviewer: Principal,
    session: AsyncSession,
    patient_identifier: str | None,
    dates: list[str] | None,
    count: int,
    cursor: str | None,
) -> Response:
    """The JSON API's search (``search_page``: the readable-by-this-custodian query and
    its own audit.read event), its page translated into AuditEvent resources."""
    nhs_number = None
    if patient_identifier is not None:
        system, _, value = patient_identifier.rpartition("|")
        if system != NHS_NUMBER_SYSTEM:
            error = {"loc": ["patient.identifier"], "msg": f"use {NHS_NUMBER_SYSTEM}|NHS number"}
            raise ProblemError(422, "Invalid request", code="invalid_request", errors=[error])
        nhs_number = value
    try:
        search = EnquirySearch.model_validate(
            {"nhs_number": nhs_number, "limit": count, "cursor": cursor} | _period(dates or [])
        )
    except ValidationError as exc:
        errors = safe_validation_errors(exc.errors())
        raise ProblemError(422, "Invalid request", code="invalid_request", errors=errors) from exc
    page = await search_page(session, request, reviewer, search)
    next_url = None
    if page.next_cursor is not None:
        next_url = str(request.url.include_query_params(_cursor=page.next_cursor))
    return fhir_response(
        resources.searchset([resources.audit_event(item) for item in page.items], next_url)
    )
