"""Pure ASGI middleware: request ids and access logs, the request body limit, and the
deadline by which every request is answered."""

import asyncio
import time
import uuid

import structlog
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.config import Settings
from app.errors import problem_response, unavailable_response

log = structlog.get_logger()

SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
    (b"x-frame-options", b"DENY"),
]


class RequestContextMiddleware:
    """Binds a request id to every log line of the request and logs one access line.

    Only method, path and status are logged: identifiers travel in bodies, never URLs.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(
            request_id=request_id, method=scope["method"], path=scope["path"]
        )
        started = time.perf_counter()
        status = 500

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers.extend(h for h in SECURITY_HEADERS if h[0] not in present)
                headers.append((b"x-request-id", request_id.encode()))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            log.info(
                "request",
                status=status,
                duration_ms=round((time.perf_counter() - started) * 1000, 2),
            )
            structlog.contextvars.clear_contextvars()


class BodyLimitMiddleware:
    """Refuses request bodies over the limit with 413, declared or streamed."""

    def __init__(self, app: ASGIApp, max_bytes: int, by_path: dict[str, int] | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        # Larger limits for the few paths that take files (register import).
        self.by_path = by_path or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_bytes = self.by_path.get(scope["path"], self.max_bytes)
        for name, value in scope["headers"]:
            if name == b"content-length" and (not value.isdigit() or int(value) > max_bytes):
                await self._refuse(scope, receive, send, max_bytes)
                return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_bytes:
                    # Rendered as a problem by the HTTP exception handler.
                    raise StarletteHTTPException(413, "Request body too large")
            return message

        await self.app(scope, limited_receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, max_bytes: int) -> None:
        response = problem_response(
            413, "Request body too large", f"The limit is {max_bytes} bytes."
        )
        await response(scope, receive, send)


class DeadlineMiddleware:
    """Every request is answered within its deadline: past it, 503 and nothing else.

    Each wait on the database is bounded on its own (connect, pool, statement, lock);
    this bounds their sum, whatever a request does. The request itself is cancelled
    and left to clean up in the background (its connection is discarded, not
    returned), so the caller never waits for a database that has stopped answering.
    A response already started (a streamed export) is let finish: its statements are
    bounded. An event written by a request cut off is kept: the log may hold an
    enquiry whose answer never left, never an answer without its enquiry.
    """

    def __init__(
        self, app: ASGIApp, settings: Settings, by_path: dict[str, float] | None = None
    ) -> None:
        self.app = app
        self.settings = settings
        self.seconds = settings.request_timeout_seconds
        self.by_path = by_path or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = abandoned = False

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if abandoned:
                return  # the caller already has its 503
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        task = asyncio.ensure_future(self.app(scope, receive, guarded_send))
        done, _ = await asyncio.wait({task}, timeout=self.by_path.get(scope["path"], self.seconds))
        if done or started:
            await task
            return
        abandoned = True
        task.cancel()
        task.add_done_callback(_retrieve)
        log.warning("request_deadline_exceeded")
        await unavailable_response(self.settings)(scope, receive, send)


def _retrieve(task: "asyncio.Task[None]") -> None:
    """Collect an abandoned request's outcome, so that nothing is left unobserved."""
    if not task.cancelled() and task.exception() is not None:
        log.info("abandoned_request_failed", error_type=type(task.exception()).__name__)
