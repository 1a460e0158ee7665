"""RFC 9457 problem details: one registry of refusals, one error class, one set of handlers.

Every problem the service answers has a stable ``code`` from ``PROBLEMS`` (the README's
"Problem types" table is this registry), and its ``type`` is ``PROBLEM_TYPE_PREFIX`` +
code. Where a refusal is audited, the event's ``refusal`` is the same code, so the log
and the answer agree.
"""

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import structlog
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import iter_route_contexts
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from app.config import Settings
from app.db import DATABASE_ERRORS

PROBLEM_MEDIA_TYPE = "application/problem+json"
# A tag URI (RFC 4151), which RFC 9457 §3.1.1 names for problem types that are
# identifiers, not locators: the same in every deployment, so a client's code that
# compares them works against test and production alike, and nothing to dereference.
# The README's "Problem types" table documents each one.
PROBLEM_TYPE_PREFIX = "tag:cp-register.example,2026:problems/"
log = structlog.get_logger()


@dataclass(frozen=True)
class ProblemKind:
    """One kind of refusal: its stable code, status and title, and what the caller does."""

    code: str
    status: int
    title: str
    meaning: str
    action: str


_UNAUTHORIZED = "Unauthorized"
_FORBIDDEN = "Forbidden"
_CONFLICT = "Conflict"
_INVALID = "Invalid request"
_UNAVAILABLE = "Service unavailable"
_RETRY = "Retry after `Retry-After` seconds"
_DUTY = f"{_RETRY}; if a child may be at risk now, call the duty contact in `detail`."

KINDS: tuple[ProblemKind, ...] = (
    ProblemKind(
        "token_required",
        401,
        _UNAUTHORIZED,
        "No bearer access token was sent.",
        "Get a token from `POST /oauth/token` and send it as `Authorization: Bearer …`.",
    ),
    ProblemKind(
        "invalid_token",
        401,
        _UNAUTHORIZED,
        "The token is malformed, forged, expired, revoked, or names a client or user (or "
        "organisation) that is no longer active. The log says which (`invalid_token` or "
        "`principal_inactive`); the answer does not.",
        "Get a new token; if that is refused too, the account is disabled: ask the operator.",
    ),
    ProblemKind(
        "not_a_reference_point",
        403,
        _FORBIDDEN,
        "Only emergency departments, out-of-hours social care and police may look up.",
        "Do not retry; lookups are for reference points only.",
    ),
    ProblemKind(
        "missing_scope",
        403,
        _FORBIDDEN,
        "The token does not carry the scope this operation needs.",
        "Ask for a token with that scope (the operator grants scopes).",
    ),
    ProblemKind(
        "not_custodian",
        403,
        _FORBIDDEN,
        "The register, the review of the log and notifications are a local authority's.",
        "Do not retry with this principal.",
    ),
    ProblemKind(
        "not_operator",
        403,
        _FORBIDDEN,
        "Administration is the service operator's.",
        "Do not retry with this principal.",
    ),
    ProblemKind(
        "wrong_organisation_kind",
        403,
        _FORBIDDEN,
        "The principal's organisation is not of a kind this operation admits.",
        "Do not retry with this principal.",
    ),
    ProblemKind(
        "purpose_not_allowed",
        403,
        _FORBIDDEN,
        "The purpose of use is not one your kind of organisation may give.",
        "Give a purpose allowed for your organisation (README, The lookup).",
    ),
    ProblemKind(
        "form_refused",
        403,
        _FORBIDDEN,
        "Web client only: the form came from another site or has expired.",
        "Open the page again and resend the form from it.",
    ),
    ProblemKind(
        "not_found",
        404,
        "Not found",
        "No such path, or a path parameter in the wrong form (an id that is not a UUID).",
        "Check the URL against the OpenAPI document.",
    ),
    ProblemKind(
        "entry_not_found",
        404,
        "Not found",
        "No entry with that id in your authority's register (another authority's entry is "
        "answered the same, and both are recorded).",
        "Check the id; search or list your register.",
    ),
    ProblemKind(
        "notification_not_found",
        404,
        "Not found",
        "No notification with that id for your authority (recorded).",
        "Check the id; list your notifications.",
    ),
    ProblemKind(
        "webhook_not_found",
        404,
        "Not found",
        "Your authority has no active webhook.",
        "Set one with `PUT /v1/notifications/webhook`.",
    ),
    ProblemKind(
        "organisation_not_found",
        404,
        "Not found",
        "No organisation with that id.",
        "Check the id; list organisations.",
    ),
    ProblemKind(
        "client_not_found",
        404,
        "Not found",
        "No system client with that id.",
        "Check the id; list clients.",
    ),
    ProblemKind(
        "user_not_found", 404, "Not found", "No user with that id.", "Check the id; list users."
    ),
    ProblemKind(
        "no_checkpoint",
        404,
        "Not found",
        "No checkpoint has been signed yet (the log is empty).",
        "Try again once there are events.",
    ),
    ProblemKind(
        "method_not_allowed",
        405,
        "Method not allowed",
        "The path does not support this method.",
        "Use one of the methods in the `Allow` header.",
    ),
    ProblemKind(
        "plan_ended",
        409,
        "Plan ended",
        "The plan has ended (or the child turned 18); entries are never reopened.",
        "Create a new entry.",
    ),
    ProblemKind(
        "already_registered",
        409,
        "Already on the register",
        "Your register already has an active entry for this child (`errors[].entry_id`).",
        "Change that entry instead.",
    ),
    ProblemKind(
        "unborn_child",
        409,
        "Unborn child",
        "An unborn child's entry cannot be given a child's identifiers by a change.",
        "Record the birth (`POST …/birth`).",
    ),
    ProblemKind(
        "already_born",
        409,
        "Already born",
        "The entry is already a born child's.",
        "Change the entry instead.",
    ),
    ProblemKind(
        "organisation_exists",
        409,
        _CONFLICT,
        "An organisation with that name or ODS code already exists.",
        "Use the existing organisation, or another name.",
    ),
    ProblemKind(
        "username_taken",
        409,
        _CONFLICT,
        "A user with that username already exists.",
        "Choose another username.",
    ),
    ProblemKind(
        "own_organisation",
        409,
        _CONFLICT,
        "An operator may not deactivate its own organisation over the API.",
        "Use the CLI if it is really meant.",
    ),
    ProblemKind(
        "own_account",
        409,
        _CONFLICT,
        "An operator may not disable itself.",
        "Ask another operator.",
    ),
    ProblemKind(
        "organisation_inactive",
        409,
        _CONFLICT,
        "The organisation is deactivated.",
        "Reactivate it first.",
    ),
    ProblemKind(
        "client_revoked",
        409,
        _CONFLICT,
        "The client is revoked for good.",
        "Register a new client.",
    ),
    ProblemKind(
        "precondition_failed",
        412,
        "Precondition failed",
        "The entry changed since you read it: `If-Match` names an older version.",
        "Read the entry again and reapply your change.",
    ),
    ProblemKind(
        "body_too_large",
        413,
        "Request body too large",
        "The body is over the limit (64 KiB; a register import 32 MiB).",
        "Send less; split an import.",
    ),
    ProblemKind(
        "unsupported_media_type",
        415,
        "Unsupported media type",
        "The body was not sent as the media type the operation takes.",
        "Send it as the OpenAPI document says (`application/json`, `text/csv`).",
    ),
    ProblemKind(
        "invalid_request",
        422,
        _INVALID,
        "A parameter or the body is invalid: `errors` names each field and what is wrong, "
        "never the value sent. Includes unknown fields, malformed JSON and foreign cursors.",
        "Correct the request; do not retry it unchanged.",
    ),
    ProblemKind(
        "enquirer_required",
        422,
        _INVALID,
        "A system client's lookup must name the member of staff who asked (`enquirer`).",
        "Send `enquirer` with `id`, `name` and `role`.",
    ),
    ProblemKind(
        "enquirer_not_allowed",
        422,
        _INVALID,
        "A signed-in user is the enquirer and must not name another.",
        "Leave `enquirer` out.",
    ),
    ProblemKind(
        "invalid_entry",
        422,
        "Invalid entry",
        "The entry breaks a rule of the register (dates, categories, identifiers).",
        "Correct the fields named in `errors`.",
    ),
    ProblemKind(
        "invalid_rows",
        422,
        "Import refused",
        "Rows of the import are invalid or duplicates; nothing was imported.",
        "Correct the rows and columns named in `errors` and import the whole file again.",
    ),
    ProblemKind(
        "weak_password",
        422,
        "Weak password",
        "The password is too short or too common.",
        "Choose a longer, less common password.",
    ),
    ProblemKind(
        "not_permitted",
        422,
        "Not permitted",
        "A scope or role that the organisation's kind may not hold.",
        "Ask only for what the organisation's kind allows.",
    ),
    ProblemKind(
        "invalid_webhook",
        422,
        "Invalid webhook",
        "In production a webhook must be an `https` URL.",
        "Give an `https` URL.",
    ),
    ProblemKind(
        "webhook_target_refused",
        422,
        "Invalid webhook",
        "The webhook's host is, or resolves to, an address that is not public (recorded).",
        "Give a receiver on the public internet, or ask the operator to allow the host.",
    ),
    ProblemKind(
        "precondition_required",
        428,
        "Precondition required",
        "A change to an entry must say which version it was made against.",
        "Send `If-Match` with the entry's `ETag`.",
    ),
    ProblemKind(
        "volume_limit_client",
        429,
        "Too many lookups",
        "This system client has reached its volume limit; the custodians are alerted.",
        _DUTY,
    ),
    ProblemKind(
        "volume_limit_enquirer",
        429,
        "Too many lookups",
        "This enquirer has reached the volume limit; the custodians are alerted.",
        _DUTY,
    ),
    ProblemKind(
        "probing_limit_client",
        429,
        "Too many lookups",
        "Too many of this client's answers were referred to a custodian (identifiers that "
        "disagree with the register); the custodians are alerted.",
        _DUTY,
    ),
    ProblemKind(
        "internal_error",
        500,
        "Internal server error",
        "A fault in the service (logged by kind, never with the request's values).",
        "Retry later; tell the operator if it persists.",
    ),
    ProblemKind(
        "service_unavailable",
        503,
        _UNAVAILABLE,
        "The database cannot be reached or the audit log written in time, so nothing was "
        "answered (fail closed).",
        _DUTY,
    ),
    ProblemKind(
        "not_ready",
        503,
        "Not ready",
        "Readiness: the database is unreachable, acts as the wrong role, or the log is "
        "not writable.",
        "Route traffic elsewhere until it is ready.",
    ),
    ProblemKind(
        "sealing_off",
        503,
        "Sealing is off",
        "This instance runs no sequencer (production seals in `cpr worker`).",
        "Read `GET /v1/audit/checkpoints/latest`; the worker signs checkpoints.",
    ),
    ProblemKind(
        "signing_refused",
        503,
        "Checkpoint signing refused",
        "The checkpoint key this instance holds is retired, or its verifier-key history "
        "does not name it: whatever it signed would not verify, so it signs nothing.",
        "Tell the operator: the checkpoint key files need attention (docs/audit-log.md).",
    ),
    ProblemKind(
        "no_checkpoint_key",
        503,
        "No checkpoint key",
        "This instance holds no key to verify checkpoints with.",
        "Ask the operator to install the checkpoint verification key.",
    ),
)
PROBLEMS: dict[str, ProblemKind] = {kind.code: kind for kind in KINDS}
ProblemCode = StrEnum("ProblemCode", [(kind.code, kind.code) for kind in KINDS])  # type: ignore[misc]
ProblemCode.__doc__ = "The stable code of a kind of problem (README, Problem types)."

# The code of a problem raised with none, for the statuses that have one obvious kind.
DEFAULT_CODES = {
    401: "invalid_token",
    404: "not_found",
    405: "method_not_allowed",
    412: "precondition_failed",
    413: "body_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    428: "precondition_required",
    500: "internal_error",
    503: "service_unavailable",
}


def problem_kind(code: str | None, status: int) -> ProblemKind:
    """The registered kind of a problem: ``code``, or the status's default kind."""
    kind = PROBLEMS.get(code) if code is not None else PROBLEMS.get(DEFAULT_CODES.get(status, ""))
    if kind is None or kind.status != status:
        raise ValueError(f"no problem kind {code!r} with status {status}: add it to KINDS")
    return kind


class Problem(BaseModel):
    """RFC 9457 problem details, with the ``code`` extension member naming the kind."""

    type: str = Field(
        description=f"`{PROBLEM_TYPE_PREFIX}` followed by `code`: compare either, never the "
        "title or detail."
    )
    title: str = Field(description="The same for every problem of one type.")
    status: int
    code: ProblemCode
    detail: str | None = Field(default=None, description="What happened this time, for people.")
    instance: str | None = None
    errors: list[dict[str, Any]] | None = Field(
        default=None,
        description="Per field (`loc`, `msg`, `type`) or per import row: never the values sent.",
    )


class ProblemError(Exception):
    """Raise to answer with a problem document. ``code`` names its kind (``PROBLEMS``);
    without one, the status's default kind (``DEFAULT_CODES``)."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str | None = None,
        *,
        code: str | None = None,
        errors: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(title)
        self.code = problem_kind(code, status).code
        self.status = status
        self.title = title
        self.detail = detail
        self.errors = errors
        self.headers = headers


def problem_response(
    status: int,
    title: str,
    detail: str | None = None,
    *,
    code: str | None = None,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    kind = problem_kind(code, status)
    body = {
        "type": PROBLEM_TYPE_PREFIX + kind.code,
        "title": title,
        "status": status,
        "code": kind.code,
        "detail": detail,
        "errors": errors,
    }
    return JSONResponse(
        {name: value for name, value in body.items() if value is not None},
        status_code=status,
        media_type=PROBLEM_MEDIA_TYPE,
        headers=headers,
    )


def unavailable_response(settings: Settings | None) -> JSONResponse:
    """503: the database cannot be reached or written, so nothing is answered."""
    detail = "The service cannot reach its database just now, so nothing was answered."
    if settings is not None:
        detail += (
            f" Try again shortly; if it cannot wait, call {settings.duty_contact_name} "
            f"on {settings.duty_contact_phone}."
        )
    return problem_response(503, _UNAVAILABLE, detail, headers={"Retry-After": "5"})


def safe_validation_errors(errors: Any) -> list[dict[str, Any]]:
    """Validation errors without the submitted values: they may be a child's identifiers."""
    return [
        {
            "loc": [str(part) for part in err.get("loc", ())],
            "msg": err.get("msg", ""),
            "type": err.get("type", ""),
        }
        for err in errors
    ]


# The key under which a route's ``responses=`` names the codes it answers; app/openapi.py
# turns them into each response's schema and description (and keeps the key there).
CODES_KEY = "x-problem-codes"


def responses(*problems: int | str) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` entry for a route's own problems, by code (or, for a status
    whose default kind it answers, by status). What every route of a kind can answer
    (401/403 of its principal, 422, 413, 503) app/openapi.py adds itself."""
    by_status: dict[int | str, dict[str, Any]] = {}
    for problem in problems:
        kind = PROBLEMS[problem] if isinstance(problem, str) else problem_kind(None, problem)
        entry = by_status.setdefault(kind.status, {CODES_KEY: []})
        if kind.code not in entry[CODES_KEY]:
            entry[CODES_KEY].append(kind.code)
    return by_status


def raises(*codes: str) -> Any:
    """Marks a dependency with the problems it answers, so that every route depending on
    it documents them (app/openapi.py walks each route's dependencies)."""
    unknown = set(codes) - set(PROBLEMS)
    if unknown:
        raise ValueError(f"no problem kinds {sorted(unknown)}: add them to KINDS")

    def mark(dependency: Any) -> Any:
        dependency.problem_codes = tuple(codes)
        return dependency

    return mark


def dependency_codes(calls: Iterable[Any]) -> set[str]:
    """The codes that ``raises`` marked on any of ``calls``."""
    return {code for call in calls for code in getattr(call, "problem_codes", ())}


def allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at the request's path: what a 405's ``Allow`` must
    list (the router's own names only the first route it found for the path)."""
    methods: set[str] = set()
    path = request.scope["path"]
    for route in iter_route_contexts(request.app.routes):
        path_regex = getattr(route, "path_regex", None)
        if path_regex is not None and path_regex.match(path):
            methods |= set(route.methods or ())
    return sorted(methods)


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(ProblemError)
    async def _problem(_request: Request, exc: ProblemError) -> JSONResponse:
        return problem_response(
            exc.status,
            exc.title,
            exc.detail,
            code=exc.code,
            errors=exc.errors,
            headers=exc.headers,
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return problem_response(422, _INVALID, errors=safe_validation_errors(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        status = exc.status_code
        if status == 400:
            # FastAPI could not read the body at all (not UTF-8, a broken form): refused
            # like a body that is not valid JSON, which FastAPI itself answers with 422.
            error = {"loc": ["body"], "msg": "the body could not be parsed", "type": "body"}
            return problem_response(422, _INVALID, errors=[error])
        if status == 405:
            allow = ", ".join(allowed_methods(request))
            return problem_response(
                405, PROBLEMS["method_not_allowed"].title, headers={"Allow": allow}
            )
        kind = problem_kind(None, status if status in DEFAULT_CODES else 500)
        return problem_response(kind.status, kind.title, headers=getattr(exc, "headers", None))

    @app.exception_handler(ClientDisconnect)
    async def _gone(_request: Request, _exc: ClientDisconnect) -> Response:
        # The caller hung up before its request was read: nobody to answer, nothing
        # asked, nothing for an operator to be paged about.
        log.info("client_disconnected")
        return Response(status_code=400)

    async def _database(request: Request, exc: Exception) -> JSONResponse:
        # Down, unreachable, hung, restarting, or refusing (a privilege revoked): nothing
        # can be decided or recorded, so nothing is answered. Logged by kind only: a
        # driver's message may quote a statement's values.
        log.error("database_unavailable", error_type=type(exc).__name__)
        return unavailable_response(getattr(request.app.state, "settings", None))

    for kind in DATABASE_ERRORS:
        app.add_exception_handler(kind, _database)

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled_error", error_type=type(exc).__name__)
        return problem_response(500, "Internal server error")
