"""The ceiling for `make bench`: only what the database must do for one lookup.

A raw ASGI app, served by uvicorn with the service's worker count, answering
any POST with one indexed SELECT on ``register_entries`` by
``subject_nhs_number`` and one INSERT into a scratch table, committed, through
the raw driver (an asyncpg pool; sqlite3 with the service's pragmas on SQLite).
No token, no validation, no ORM, no audit chain: the audited lookup's
throughput as a share of this one says what the service costs above the database.

    BENCH_CEILING_DATABASE_URL=postgresql://... [BENCH_CEILING_DATABASE_ROLE=cpr_app] \
        uvicorn bench.ceiling:create_app --factory

On PostgreSQL it connects as the service does in production: its login role,
acting as BENCH_CEILING_DATABASE_ROLE (given to the server at connect, as
``app.db.open_connection`` gives CPR_DATABASE_ROLE, and checked once per
connection), so its statements pass the same privilege checks as the service's.
The scratch table is made by bench/run.py (``CEILING_TABLE_SQL``), which grants
that role SELECT and INSERT on it.
"""

import asyncio
import json
import os
import sqlite3
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime
from typing import Any, Protocol

import asyncpg

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# At most as many connections as the service's pool (CPR_DATABASE_POOL_SIZE, 20).
POOL_SIZE, POOL_OVERFLOW = 10, 10
CEILING_TABLE = "bench_ceiling_writes"
CEILING_TABLE_SQL = (
    f"CREATE TABLE {CEILING_TABLE} (id VARCHAR(36) PRIMARY KEY, "
    "occurred_at VARCHAR(40) NOT NULL, nhs_number VARCHAR(10), outcome VARCHAR(32) NOT NULL)"
)
_SELECT = (
    "SELECT id, categories, unborn FROM register_entries "
    "WHERE subject_nhs_number = {0} AND ended_on IS NULL AND (adult_on IS NULL OR adult_on > {1})"
)
_INSERT = (
    "INSERT INTO bench_ceiling_writes (id, occurred_at, nhs_number, outcome) "
    "VALUES ({0}, {1}, {2}, {3})"
)


class Store(Protocol):
    async def lookup_and_record(self, nhs_number: str) -> str: ...

    async def close(self) -> None: ...


class PostgresStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @classmethod
    async def open(cls, dsn: str, role: str | None = None) -> "PostgresStore":
        async def check_role(connection: asyncpg.Connection) -> None:
            acting = await connection.fetchval("SELECT current_user")
            if acting != role:
                raise RuntimeError(f"the ceiling acts as {acting!r}, not {role!r}")

        pool = await asyncpg.create_pool(
            dsn,
            min_size=POOL_SIZE,
            max_size=POOL_SIZE + POOL_OVERFLOW,
            server_settings={"role": role} if role is not None else None,
            init=check_role if role is not None else None,
        )
        return cls(pool)

    async def lookup_and_record(self, nhs_number: str) -> str:
        async with self._pool.acquire() as connection, connection.transaction():
            row = await connection.fetchrow(_SELECT.format("$1", "$2"), nhs_number, date.today())
            outcome = "on_plan" if row is not None else "not_on_plan"
            await connection.execute(
                _INSERT.format("$1", "$2", "$3", "$4"),
                str(uuid.uuid4()),
                datetime.now(UTC).isoformat(),
                nhs_number,
                outcome,
            )
        return outcome

    async def close(self) -> None:
        await self._pool.close()


class SqliteStore:
    """sqlite3 connections in worker threads, with the service's pragmas (WAL,
    synchronous=FULL) and BEGIN IMMEDIATE."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._idle: asyncio.Queue[sqlite3.Connection] = asyncio.Queue()

    @classmethod
    async def open(cls, path: str) -> "SqliteStore":
        store = cls(path)
        for _ in range(POOL_SIZE):
            store._idle.put_nowait(await asyncio.to_thread(store._connect))
        return store

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=FULL")
        connection.execute("PRAGMA busy_timeout=10000")
        return connection

    @staticmethod
    def _work(connection: sqlite3.Connection, nhs_number: str) -> str:
        connection.execute("BEGIN IMMEDIATE")
        try:
            row = connection.execute(
                _SELECT.format("?", "?"), (nhs_number, date.today().isoformat())
            ).fetchone()
            outcome = "on_plan" if row is not None else "not_on_plan"
            connection.execute(
                _INSERT.format("?", "?", "?", "?"),
                (str(uuid.uuid4()), datetime.now(UTC).isoformat(), nhs_number, outcome),
            )
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        return outcome

    async def lookup_and_record(self, nhs_number: str) -> str:
        connection = await self._idle.get()
        try:
            return await asyncio.to_thread(self._work, connection, nhs_number)
        finally:
            self._idle.put_nowait(connection)

    async def close(self) -> None:
        while not self._idle.empty():
            self._idle.get_nowait().close()


async def open_store(url: str, role: str | None = None) -> Store:
    """``postgresql://...`` (acting as ``role``) or ``sqlite:///path`` (SQLAlchemy
    driver suffixes are dropped)."""
    scheme, _, rest = url.partition("://")
    if scheme.startswith("postgresql"):
        return await PostgresStore.open(f"postgresql://{rest}", role)
    if scheme.startswith("sqlite"):
        return await SqliteStore.open(rest.removeprefix("/"))
    raise ValueError(f"unsupported database URL scheme {scheme!r}")


async def _read_body(receive: Receive) -> bytes:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body", False):
            return body


async def _respond(send: Send, status: int, payload: dict[str, str]) -> None:
    body = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def create_app() -> ASGIApp:
    url = os.environ["BENCH_CEILING_DATABASE_URL"]
    role = os.environ.get("BENCH_CEILING_DATABASE_ROLE")
    state: dict[str, Store] = {}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    state["store"] = await open_store(url, role)
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await state["store"].close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        if scope["method"] != "POST":
            await _respond(send, 200, {"status": "ready"})
            return
        subject = json.loads(await _read_body(receive))["subject"]
        outcome = await state["store"].lookup_and_record(subject["nhs_number"])
        await _respond(send, 200, {"status": outcome})

    return app
