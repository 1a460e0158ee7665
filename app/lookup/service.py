"""An enquiry decided: every legitimacy check in order (README, "Security model"), the audit event
committed, and the answer. The one place a lookup is decided, over every channel (the
JSON API, FHIR, the web client).

Every enquiry from an identified caller, answered or refused, is one audit event
committed before the response leaves.
"""

import uuid
from datetime import date
from typing import Any, NoReturn

import structlog
from fastapi import Request
from pydantic import ValidationError

from app.audit.service import (
    EventRow,
    audit_unavailable,
    new_event,
    request_context,
    write_event,
)
from app.auth.certificates import presented_thumbprint
from app.auth.principals import (
    PRINCIPAL_STATEMENTS,
    Principal,
    PrincipalQuery,
    principal_from_row,
    principal_query,
    unauthenticated,
)
from app.auth.tokens import InvalidToken, TokenClaims, verify_token
from app.config import Settings
from app.db import DatabaseUnavailable, HotConnection, HotStatement, hot_connection, utcnow
from app.errors import ProblemError, safe_validation_errors
from app.identity.models import REFERENCE_POINT_KINDS, Scope
from app.lookup.limits import limit_columns, limit_lock_names, limit_parameters, over_limit
from app.lookup.schemas import AnswerStatus, Contact, LookupAnswer, LookupRequest
from app.register.identifiers import normalise_name
from app.register.matching import (
    Candidate,
    Decision,
    Status,
    SubjectQuery,
    decide,
    find_candidates,
)

log = structlog.get_logger()

# What an enquiry can be refused with, over any channel (the JSON API and FHIR): the
# checks of answer_enquiry, in their order.
REFUSALS = (
    "token_required",
    "invalid_token",
    "not_a_reference_point",
    "missing_scope",
    "purpose_not_allowed",
    "unsupported_media_type",
    "invalid_request",
    "enquirer_required",
    "enquirer_not_allowed",
    "volume_limit_client",
    "volume_limit_enquirer",
    "probing_limit_client",
)


async def answer_enquiry(
    request: Request, token: str, body: bytes | None, channel: dict[str, Any] | None = None
) -> LookupAnswer:
    """Every legitimacy check (README, "Security model") on the enquiry ``body`` (JSON; None when it
    was not sent as JSON) from the bearer of ``token``, the audit event committed, and
    the answer. Raises the ProblemError of a refusal (itself audited), or 503 when the
    database cannot be read or written.

    The one way an enquiry is answered: another interface (app/fhir/) translates its
    request into this body and names itself in ``channel`` (e.g. ``{"channel": "fhir"}``),
    which every event of the enquiry records in its ``detail``."""
    state = request.app.state
    # 1. The token (signature, claims) names a principal. Checked before a connection
    # is taken: refreshing the key set takes one of its own from the same pool, and
    # requests holding every connection while they wait for it would wait for good.
    try:
        claims: TokenClaims | InvalidToken = await verify_token(
            state.keyring,
            state.settings,
            token,
            certificate=presented_thumbprint(request, state.settings),
        )
    except InvalidToken as exc:
        claims = exc
    try:
        async with hot_connection(state.sessionmaker, state.sqlite_writers) as connection:
            return await _lookup(request, body, state.settings, connection, claims, channel)
    except DatabaseUnavailable as exc:
        # A read failed (a write failure is already a 503 from write_event): nothing
        # could be decided, so nothing is answered.
        log.error("lookup_database_error", error_type=str(exc))
        raise audit_unavailable() from exc


async def _lookup(
    request: Request,
    body: bytes | None,
    settings: Settings,
    connection: HotConnection,
    claims: TokenClaims | InvalidToken,
    channel: dict[str, Any] | None = None,
) -> LookupAnswer:
    context = request_context(request)
    if isinstance(claims, InvalidToken):
        detail = {"problem": str(claims), "path": request.url.path} | (channel or {})
        refused = new_event(
            event_type="auth.refused", refusal="invalid_token", detail=detail, **context
        )
        await _refuse(connection, refused, unauthenticated())

    command: LookupRequest | None = None
    invalid: ValidationError | None = None
    if body is not None:
        try:
            command = LookupRequest.model_validate_json(body)
        except ValidationError as exc:
            invalid = exc

    # 2. One statement: the principal and its organisation, active, holding the token's
    # jti unrevoked; and with them both volume counts (check 7, evaluated in its turn).
    query = principal_query(claims)
    now = utcnow()
    row = None
    candidates: list[Candidate] = []
    if query is not None:
        enquirer_id = query.subject if query.kind == "user" else None
        if query.kind == "client" and command is not None and command.enquirer is not None:
            enquirer_id = command.enquirer.id
        parameters = query.parameters | limit_parameters(
            settings, principal=query.subject, enquirer_id=enquirer_id, now=now
        )
        if command is not None:
            # The register is read before the limits' locks are taken, so that they are
            # held for the count and the write only: a client's lookups queue on them.
            # Nothing read here is disclosed unless every check below passes.
            candidates = await find_candidates(connection, _subject_query(command), date.today())
        if settings.lookup_limits_serialised:
            # Count and write under a lock per client and per enquirer, held until the
            # event commits: two lookups of one caller never both count below a limit
            # before either is written, across workers and replicas alike.
            # A burst from one caller queues here, until just before the request's deadline.
            await connection.serialise(
                limit_lock_names(query.subject, enquirer_id),
                wait_seconds=max(settings.request_timeout_seconds - 0.25, 0.1),
            )
        row = await principal_and_limits(connection, query, parameters)
    principal = principal_from_row(query, row, claims) if query is not None else None
    if principal is None:
        # Disabled, revoked, moved to another organisation, or a token we never issued.
        refused = new_event(
            event_type="auth.refused",
            principal=claims.subject,
            refusal="principal_inactive",
            detail={"path": request.url.path} | (channel or {}),
            **context,
        )
        await _refuse(connection, refused, unauthenticated())

    event = new_event(
        event_type="lookup",
        principal=principal.subject,
        organisation_id=principal.organisation_id,
        outcome="refused",
        detail=dict(channel) if channel else None,
        **context,
    )
    # 3. A reference point, with the lookup scope.
    if principal.organisation_kind not in REFERENCE_POINT_KINDS:
        event["refusal"] = "not_a_reference_point"
        await _refuse(
            connection,
            event,
            ProblemError(
                403,
                "Forbidden",
                "Only reference points (A&E, out-of-hours, police) may look up.",
                code="not_a_reference_point",
            ),
        )
    if Scope.lookup not in principal.scopes:
        event["refusal"] = "missing_scope"
        await _refuse(
            connection,
            event,
            ProblemError(
                403,
                "Forbidden",
                "The token does not carry the register:lookup scope.",
                code="missing_scope",
            ),
        )

    if body is None:
        event["refusal"] = "unsupported_media_type"
        await _refuse(
            connection,
            event,
            ProblemError(
                415,
                "Unsupported media type",
                "Send the enquiry as application/json.",
                code="unsupported_media_type",
            ),
        )
    if command is None:
        assert invalid is not None
        errors = safe_validation_errors(invalid.errors())
        event["refusal"] = "invalid_request"
        event["detail"] = (event["detail"] or {}) | {"errors": errors}
        problem = ProblemError(422, "Invalid request", code="invalid_request", errors=errors)
        await _refuse(connection, event, problem)

    event["purpose"] = command.purpose.value
    event["reason"] = command.reason
    subject = _subject_query(command)
    event["query"] = subject.for_audit()
    # 4. A named enquirer.
    enquirer = _enquirer(principal, command, event)
    if enquirer is None:
        problem = ProblemError(422, "Invalid request", _ENQUIRER_RULE, code=event["refusal"])
        await _refuse(connection, event, problem)
    event["enquirer"] = enquirer
    event["enquirer_id"] = enquirer["id"]
    # 5. A purpose allowed for the organisation's kind.
    if command.purpose.value not in settings.purposes_by_kind.get(principal.organisation_kind, ()):
        event["refusal"] = "purpose_not_allowed"
        await _refuse(
            connection,
            event,
            ProblemError(
                403,
                "Forbidden",
                f"Purpose {command.purpose.value!r} is not allowed for "
                f"{principal.organisation_kind.value.replace('_', ' ')} enquirers.",
                code="purpose_not_allowed",
            ),
        )

    # 7. Within the volume limits (counted in step 2, for this very enquirer).
    assert row is not None  # the principal was read from it
    over = over_limit(settings, row, now)
    if over is not None:
        event["refusal"] = over.refusal
        await _refuse(
            connection,
            event,
            ProblemError(
                429,
                "Too many lookups",
                f"{_LIMIT_REACHED[over.refusal]}; the custodians have been alerted. If a "
                f"child is at risk now, call {settings.duty_contact_name} on "
                f"{settings.duty_contact_phone}.",
                code=over.refusal,
                headers={"Retry-After": str(over.retry_after_seconds)},
            ),
        )

    # 6. A unique exact match, or nothing.
    decision = decide(subject, candidates)
    answer = _answer(event["id"], decision, settings)
    _record_answer(event, decision, answer)
    await write_event(connection, event)
    return answer


async def _refuse(connection: HotConnection, event: EventRow, problem: ProblemError) -> NoReturn:
    """Record a refusal, then raise the problem that answers it (as audit.service.refuse)."""
    event["outcome"] = "refused"
    await write_event(connection, event)
    log.info("request_refused", refusal=event["refusal"], event_id=str(event["id"]))
    raise problem


# The principal's statement with the two volume counts beside it, by kind of principal
# and database.
_PRINCIPAL_AND_LIMITS = {
    (kind, dialect): HotStatement(statement.add_columns(*limit_columns(dialect)))
    for kind, statement in PRINCIPAL_STATEMENTS.items()
    for dialect in ("postgresql", "sqlite")
}


async def principal_and_limits(
    connection: HotConnection, query: PrincipalQuery, parameters: dict[str, Any]
) -> Any:
    """The principal's row (None if not active, or the token not ours) with both counts."""
    statement = _PRINCIPAL_AND_LIMITS[(query.kind, connection.dialect_name)]
    rows = await connection.fetch(statement, parameters)
    return rows[0] if rows else None


_LIMIT_REACHED = {
    "volume_limit_client": "This system has reached its volume limit",
    "volume_limit_enquirer": "This enquirer has reached the volume limit",
    "probing_limit_client": (
        "This system has had too many answers referred to a custodian (identifiers that "
        "disagree with the register)"
    ),
}

_ENQUIRER_RULE = (
    "A system client must name the member of staff who asked (enquirer id, name, role); "
    "a signed-in user is the enquirer and must not name another."
)


def _enquirer(
    principal: Principal, command: LookupRequest, event: EventRow
) -> dict[str, Any] | None:
    if principal.kind == "client":
        if command.enquirer is None:
            event["refusal"] = "enquirer_required"
            return None
        return command.enquirer.model_dump()
    if command.enquirer is not None:
        event["refusal"] = "enquirer_not_allowed"
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
    status: AnswerStatus = decision.status.value
    if decision.status is Status.on_plan:
        entry = decision.candidates[0]
        return LookupAnswer(
            lookup_id=lookup_id,
            status=status,
            categories=list(entry.categories),
            unborn=entry.unborn,
            contact=contact,
        )
    return LookupAnswer(lookup_id=lookup_id, status=status, contact=contact)


def _record_answer(event: EventRow, decision: Decision, answer: LookupAnswer) -> None:
    event["outcome"] = decision.status.value
    event["disclosed"] = answer.model_dump(mode="json", exclude={"lookup_id"}, exclude_none=True)
    if decision.authority is not None:
        event["authority_id"] = decision.authority.authority_id
    if decision.status is Status.on_plan:
        event["entry_id"] = decision.candidates[0].entry_id
        event["entry_version"] = decision.candidates[0].version
    if decision.candidates:
        event["detail"] = (event["detail"] or {}) | {
            "matched": [
                {
                    "entry_id": str(c.entry_id),
                    "version": c.version,
                    "authority_id": str(c.authority_id),
                }
                for c in decision.candidates
            ]
        }
