"""The OpenAPI document, made to tell the truth about what FastAPI cannot see.

FastAPI documents a route's parameters, body and answer. What else each operation
can answer is derived here, once, from the route itself, rather than listed by hand
on each decorator:

- **401/403**: a route whose dependencies reach ``get_principal`` answers 401
  (``token_required``, ``invalid_token``); one behind ``require_scope`` 403 (the kind
  refusal and ``missing_scope``), both from the ``raises`` markers on those
  dependencies. The same dependencies give the operation its ``security``: OAuth2 with
  the scope ``require_scope`` checks (its ``required_scope``), or the same token as
  HTTP bearer; none without them. A route that checks its caller itself (the lookup)
  declares its codes and ``security`` on its decorator.
- **422** ``invalid_request``: any parameter or body FastAPI validates.
- **413** ``body_too_large``: any request body (BodyLimitMiddleware reads every body).
- **404** ``not_found``: a path parameter with a convertor (``{entry_id:uuid}``), which
  the router does not match when it has the wrong form.
- **503** ``service_unavailable``: every operation (DeadlineMiddleware answers 503 to
  any request not answered in time, and any database error is a 503).
- Everything else a route answers (404 of a missing entry, 409, 412, 428, the lookup's
  refusals) it names by code in ``responses=`` (``app.errors.responses``); a route that
  answers ``precondition_required`` also gets its ``If-Match`` header documented.

Each problem status is documented as ``application/problem+json``, its schema the
``Problem`` restricted to the codes the operation can answer, which the description
lists too. The token endpoint's own errors are RFC 6749's and documented by its route.
"""

from collections.abc import Iterator
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute, RouteContext, iter_route_contexts
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from app.auth.principals import get_principal
from app.errors import (
    CODES_KEY,
    KINDS,
    PROBLEM_MEDIA_TYPE,
    PROBLEMS,
    Problem,
    dependency_codes,
)
from app.identity.models import Scope

OAUTH2 = "oauth2"
BEARER = "bearer"
CLIENT_BASIC = "clientSecretBasic"
TOKEN_URL = "/oauth/token"  # noqa: S105  (a path, not a secret)
_SCOPES = {
    Scope.lookup.value: "Look children up (reference points: A&E, out-of-hours, police).",
    Scope.register_manage.value: "Keep your authority's register (custodians).",
    Scope.audit_read.value: "Review enquiries, alerts and notifications (custodians).",
    Scope.admin.value: "Register organisations, clients and users (the service operator).",
}
SECURITY_SCHEMES: dict[str, Any] = {
    OAUTH2: {
        "type": "oauth2",
        "description": "Access tokens (ES256 JWTs, at most 15 minutes) from the token "
        "endpoint: client credentials for systems, the password grant for staff users.",
        "flows": {
            "clientCredentials": {"tokenUrl": TOKEN_URL, "scopes": _SCOPES},
            "password": {"tokenUrl": TOKEN_URL, "scopes": _SCOPES},
        },
    },
    BEARER: {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": "The same access token, sent as `Authorization: Bearer …`.",
    },
    CLIENT_BASIC: {
        "type": "http",
        "scheme": "basic",
        "description": "Token endpoint only: a system client's id and secret (RFC 6749 "
        "§2.3.1); they may instead be sent as `client_id` and `client_secret`.",
    },
}
_HEADERS = {
    401: {
        "WWW-Authenticate": {
            "description": "`Bearer` (RFC 6750), with `error` when a token was sent.",
            "schema": {"type": "string"},
        }
    },
    429: {"Retry-After": {"description": "Seconds to wait.", "schema": {"type": "string"}}},
    503: {
        "Retry-After": {
            "description": "Seconds to wait (when the database is the reason).",
            "schema": {"type": "string"},
        }
    },
}
_IF_MATCH = {
    "name": "If-Match",
    "in": "header",
    "required": True,
    "description": "The `ETag` of the entry as you read it: 428 without it (or with `*`, "
    "which names no version), 412 when the entry has changed since.",
    "schema": {"type": "string"},
}
FHIR_PREFIX = "/fhir/"
FHIR_MEDIA_TYPE = "application/fhir+json"
_OPERATION_OUTCOME = {
    "schema": {
        "type": "object",
        "description": "A FHIR R4 OperationOutcome: `issue[].details.coding[].code` is the "
        "problem's `code` (docs/fhir/).",
        "required": ["resourceType", "issue"],
        "properties": {"resourceType": {"const": "OperationOutcome"}},
    }
}
# FastAPI's own 422 schemas: the service answers 422 with a Problem instead.
_FASTAPI_VALIDATION_SCHEMAS = ("HTTPValidationError", "ValidationError")


def build_document(app: FastAPI, extra_models: tuple[type[BaseModel], ...] = ()) -> dict[str, Any]:
    """The document ``app`` serves: FastAPI's, with ``extra_models`` (bodies that routes
    parse themselves) and the derived security and problems of every operation."""
    document = get_openapi(
        title=app.title, version=app.version, summary=app.summary, routes=app.routes
    )
    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    _, definitions = models_json_schema(
        [(Problem, "serialization"), *((model, "validation") for model in extra_models)],
        ref_template="#/components/schemas/{model}",
    )
    schemas.update(definitions["$defs"])
    schemas["ProblemCode"]["description"] = (
        "The kind of problem (README, Problem types):\n"
        + "".join(
            f"\n- `{kind.code}` ({kind.status}): {kind.meaning} {kind.action}" for kind in KINDS
        )
    )
    for name in _FASTAPI_VALIDATION_SCHEMAS:
        schemas.pop(name, None)
    components["securitySchemes"] = SECURITY_SCHEMES
    for route in iter_route_contexts(app.routes):
        if isinstance(route.original_route, APIRoute) and route.include_in_schema:
            for method in route.methods or ():
                operation = document["paths"][route.path_format][method.lower()]
                _document_operation(operation, route)
    return document


def _dependants(dependant: Dependant) -> Iterator[Dependant]:
    yield dependant
    for sub in dependant.dependencies:
        yield from _dependants(sub)


def _document_operation(operation: dict[str, Any], route: RouteContext) -> None:
    # An APIRoute's (build_document): both are set.
    assert route.path is not None
    assert route.path_format is not None
    dependants = list(_dependants(route.dependant))
    calls = [dependant.call for dependant in dependants if dependant.call is not None]
    codes = dependency_codes(calls)
    for entry in route.responses.values():
        codes.update(entry.get(CODES_KEY, ()))
    converted = {part.split(":")[0].strip("{") for part in route.path.split("/") if ":" in part}
    validated = [
        field
        for dependant in dependants
        for field in (
            *(f for f in dependant.path_params if f.name not in converted),
            *dependant.query_params,
            *dependant.header_params,
            *dependant.cookie_params,
            *dependant.body_params,
        )
    ]
    if validated:
        codes.add("invalid_request")
    if "requestBody" in operation:
        codes.add("body_too_large")
    if converted:
        codes.add("not_found")
    codes.add("service_unavailable")
    if "precondition_required" in codes:
        # Read by the route itself (optimistic concurrency), so FastAPI cannot see it.
        operation.setdefault("parameters", []).append(_IF_MATCH)

    if "security" not in operation:
        scopes = sorted(
            {scope for call in calls if (scope := getattr(call, "required_scope", None))}
        )
        secured = get_principal in calls
        operation["security"] = [{OAUTH2: scopes}, {BEARER: []}] if secured else []

    responses = operation.setdefault("responses", {})
    if "422" in responses and "invalid_request" not in codes:
        del responses["422"]  # FastAPI's, for a route that validates nothing itself
    by_status: dict[int, list[str]] = {}
    for code in codes:
        by_status.setdefault(PROBLEMS[code].status, []).append(code)
    for status, status_codes in by_status.items():
        responses[str(status)] = _problem_response(status, sorted(status_codes))
        if route.path_format.startswith(FHIR_PREFIX):
            # app/fhir/ answers its refusals as OperationOutcome; the middleware's 413
            # and 503 (before any route runs) stay problems.
            responses[str(status)]["content"][FHIR_MEDIA_TYPE] = _OPERATION_OUTCOME
    operation["responses"] = dict(sorted(responses.items()))


def _problem_response(status: int, codes: list[str]) -> dict[str, Any]:
    listed = ", ".join(f"`{code}`" for code in codes)
    response: dict[str, Any] = {
        "description": f"{HTTPStatus(status).phrase}: a problem, `code` one of {listed} "
        "(each is described under the `ProblemCode` schema).",
        "content": {
            PROBLEM_MEDIA_TYPE: {
                "schema": {
                    "allOf": [
                        {"$ref": "#/components/schemas/Problem"},
                        {
                            "properties": {
                                "status": {"const": status},
                                "code": {"enum": codes},
                            }
                        },
                    ]
                }
            }
        },
        CODES_KEY: codes,
    }
    if status in _HEADERS:
        response["headers"] = _HEADERS[status]
    return response
