"""`cpr worker`: the background work (app/background.py) in a process of its own, one
active at a time across replicas, so API processes only answer.

The active worker holds a session-level PostgreSQL advisory lock on a connection of its
own. It checks that connection every ``worker_leader_check_seconds``; losing it (the
database restarted, the network cut) stops the work at once, and the worker goes back to
asking for the lock. A worker that dies frees the lock with its connection; one that is
frozen or cut off is ended by the database after ``worker_leader_timeout_seconds``
(``idle_session_timeout``), and a standby takes over. Correctness never rests on the
leadership alone: every sealing round takes its own lock, and webhook deliveries are
claimed row by row, so two workers that both believe they are active still seal one
chain and deliver each notification once.

On SQLite (one host, one file) there is no lock to hold: the worker is always active.

Probes: GET /livez (the loops run) and GET /readyz (the database answers; the body says
whether this worker is active or standing by).
"""

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from enum import StrEnum
from typing import Any

import asyncpg
import structlog
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.background import Background, shut_down
from app.config import Settings, get_settings
from app.db import create_engine, create_sessionmaker, lock_key, open_connection
from app.heap import settle_heap
from app.logging import configure_logging

LEADER_LOCK = lock_key("cp-register worker leadership")
log = structlog.get_logger()


class Role(StrEnum):
    active = "active"
    standby = "standby"


def _milliseconds(seconds: float) -> str:
    return str(max(1, round(seconds * 1000)))


class Leadership:
    """The advisory lock that makes one worker the active one, on its own connection."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._connection: asyncpg.Connection | None = None

    async def acquire(self) -> bool:
        """Try once, without waiting: True if this worker now holds the lock."""
        if self._settings.is_sqlite:
            return True
        settings = self._settings
        connection = await open_connection(settings)
        try:
            # A session nobody checks for this long is one whose worker froze or was cut
            # off: the database ends it, and with it the lock.
            await connection.execute(
                "SET idle_session_timeout = "
                f"{_milliseconds(settings.worker_leader_timeout_seconds)}",
                timeout=settings.database_statement_timeout_seconds,
            )
            held = await connection.fetchval(
                "SELECT pg_try_advisory_lock($1)",
                LEADER_LOCK,
                timeout=settings.database_statement_timeout_seconds,
            )
        except BaseException:
            connection.terminate()
            raise
        if not held:
            await self._close(connection)
            return False
        self._connection = connection
        return True

    async def check(self) -> None:
        """Raises when the database cannot be reached (or no longer knows this session)."""
        if self._settings.is_sqlite:
            return
        if self._connection is None or self._connection.is_closed():
            raise ConnectionError("the leadership connection is closed")
        await self._connection.fetchval(
            "SELECT 1", timeout=self._settings.database_statement_timeout_seconds
        )

    async def probe(self) -> None:
        """For a standby: the database answers (a connection opened and closed)."""
        if self._settings.is_sqlite:
            return
        connection = await open_connection(self._settings)
        await self._close(connection)

    def abandon(self) -> None:
        """Drop the connection without a word to the server: the lock goes with it."""
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.terminate()

    async def release(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            await self._close(connection)

    async def _close(self, connection: asyncpg.Connection) -> None:
        try:
            await connection.close(timeout=1)
        except (OSError, TimeoutError, asyncpg.PostgresError):
            connection.terminate()


class Worker:
    """Stands by until it holds the leadership, then runs the background work until it
    loses it or is stopped."""

    def __init__(self, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
        self._settings = settings
        self._sessionmaker = sessionmaker
        self._leadership = Leadership(settings)
        self._background: Background | None = None
        self.role = Role.standby
        # When the database last answered this worker (monotonic); None: not yet.
        self.reached_at: float | None = None
        self.problem: str | None = None

    async def run_forever(self) -> None:
        interval = self._settings.worker_leader_check_seconds
        while True:
            try:
                async with asyncio.timeout(self._settings.database_connect_timeout_seconds + 3):
                    await self._step()
                self.reached_at, self.problem = time.monotonic(), None
            except Exception as exc:  # the database, the driver, a check cut short: stand by
                self.problem = f"the database did not answer ({type(exc).__name__})"
                log.warning("worker_database_unreachable", error_type=type(exc).__name__)
                await self._stand_down()
            await asyncio.sleep(interval)

    async def _step(self) -> None:
        if self.role is Role.active:
            await self._leadership.check()
            if self._background is not None and self._background.failed():
                # A bug, not a fault (faults are retried in the loops): /livez fails, and
                # the orchestrator restarts the worker.
                log.error("worker_background_ended")
            return
        if not await self._leadership.acquire():
            await self._leadership.probe()
            return
        self._background = Background(self._settings, self._sessionmaker)
        self._background.start()
        self.role = Role.active
        log.info("worker_active")

    async def _stand_down(self) -> None:
        """Lost the database: stop at once (no final seal: it could not be written)."""
        if self._background is not None:
            with suppress(TimeoutError):
                async with asyncio.timeout(self._settings.shutdown_timeout_seconds):
                    await self._background.stop(final_checkpoint=False)
            self._background = None
            log.warning("worker_standing_by")
        self.role = Role.standby
        # Whatever state the connection is in (a check cut short leaves it mid-query).
        self._leadership.abandon()

    async def stop(self) -> None:
        """On SIGTERM: seal what is left, sign a final checkpoint, hand over the lock."""
        if self._background is not None:
            await self._background.stop()
            self._background = None
        self.role = Role.standby
        await self._leadership.release()

    def health(self) -> tuple[int, dict[str, Any]]:
        """/readyz: 200 while the database answered within three checks."""
        settings = self._settings
        # The last check answered, and not too long ago (a check that hangs says nothing).
        fresh = (
            self.problem is None
            and self.reached_at is not None
            and time.monotonic() - self.reached_at
            <= 2 * settings.worker_leader_check_seconds + settings.database_connect_timeout_seconds
        )
        body: dict[str, Any] = {"status": self.role.value if fresh else "unavailable"}
        problems = [self.problem] if self.problem else []
        if not fresh and not problems:
            problems.append("the database has not answered the last check")
        sequencer = self._background.sequencer if self._background is not None else None
        if sequencer is not None and (copy := sequencer.checkpoint_copy_problem()) is not None:
            problems.append(copy)
        if problems:
            body["problems"] = problems
        return (200 if fresh else 503), body

    def alive(self, running: "asyncio.Task[None]") -> bool:
        """The leadership loop runs, and so do the background loops while active."""
        return not running.done() and (self._background is None or not self._background.failed())


def create_worker_app(settings: Settings | None = None) -> FastAPI:
    """The worker as an ASGI app, so uvicorn serves its probes and runs its lifespan:
    SIGTERM ends the HTTP side first, then the lifespan's end seals and hands over."""
    settings = settings or get_settings()
    settings.check_checkpoint_key()
    configure_logging(settings.log_level)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_engine(settings)
        worker = Worker(settings, create_sessionmaker(engine))
        app.state.worker = worker
        running = asyncio.create_task(worker.run_forever())
        app.state.running = running
        settle_heap()
        try:
            yield
        finally:
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
            await shut_down(settings, engine, worker.stop)

    app = FastAPI(
        title="cp-register worker",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )

    @app.get("/livez")
    async def livez(request: Request) -> JSONResponse:
        alive = request.app.state.worker.alive(request.app.state.running)
        return JSONResponse({"status": "ok" if alive else "failed"}, 200 if alive else 503)

    @app.get("/readyz")
    async def readyz(request: Request) -> JSONResponse:
        status, body = request.app.state.worker.health()
        return JSONResponse(body, status)

    return app
