"""RFC 9457 problem details: one error class, one set of handlers."""

from typing import Any

import structlog
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from app.config import Settings
from app.db import DATABASE_ERRORS

PROBLEM_MEDIA_TYPE = "application/problem+json"
log = structlog.get_logger()


class Problem(BaseModel):
    """RFC 9457 problem details, as documented in OpenAPI."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
    errors: list[dict[str, Any]] | None = None


class ProblemError(Exception):
    """Raise to answer with a problem document."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str | None = None,
        *,
        errors: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(title)
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
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = Problem(title=title, status=status, detail=detail, errors=errors)
    return JSONResponse(
        body.model_dump(exclude_none=True),
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
    return problem_response(503, "Service unavailable", detail, headers={"Retry-After": "5"})


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


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` entry for a route, so OpenAPI lists its problems."""
    return {status: {"model": Problem, "content": {PROBLEM_MEDIA_TYPE: {}}} for status in statuses}


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(ProblemError)
    async def _problem(_request: Request, exc: ProblemError) -> JSONResponse:
        return problem_response(
            exc.status, exc.title, exc.detail, errors=exc.errors, headers=exc.headers
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return problem_response(422, "Invalid request", errors=safe_validation_errors(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        title = {
            404: "Not found",
            405: "Method not allowed",
            413: "Request body too large",
        }.get(exc.status_code, "Error")
        return problem_response(exc.status_code, title, headers=getattr(exc, "headers", None))

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
