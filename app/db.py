"""Engine and sessions. One engine per app; the request commits before it answers."""

import asyncio
import hashlib
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar, cast

import asyncpg
from sqlalchemy import JSON, DateTime, Dialect, MetaData, Select, Table, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError, EmulatedDBAPIException, SQLAlchemyError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.pool import PoolProxiedConnection
from sqlalchemy.sql.selectable import ExecutableReturnsRows
from sqlalchemy.types import TypeDecorator
from sqlalchemy.util import greenlet_spawn

from app.config import Settings

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC timestamps on both databases (SQLite stores no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    # Every model maps one Table (declarative types it as any FromClause): so that
    # insert(Model.__table__) and the like type-check.
    __table__: ClassVar[Table]
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime,
        dict[str, Any]: JSON,
        list[str]: JSON,
    }


def utcnow() -> datetime:
    return datetime.now(UTC)


POOL_RECYCLE_SECONDS = 3600

# Execution option for work that never writes: on SQLite it begins a deferred
# transaction, which in WAL mode never waits for, nor blocks, a writer.
READ_ONLY_OPTION = "cpr_read_only"

# The driver's own timeout on a statement outlives the server's statement_timeout by
# this much: the server cancels a slow statement itself (and says so); the driver
# gives up only on a server that does not answer at all (hung, frozen, partitioned).
DRIVER_TIMEOUT_MARGIN_SECONDS = 0.5


class WrongRole(Exception):
    """A connection does not act as the configured role: it is never used."""


def create_engine(settings: Settings, *, owner: bool = False) -> AsyncEngine:
    """The one engine of a process, and with it the one way to open a connection.

    ``owner``: for migrations, which run as the login role itself (the schema owner),
    with no statement or lock timeouts (DDL may wait and take long).
    """
    # hide_parameters: SQL errors must never carry a child's identifiers into the logs.
    if settings.is_sqlite:
        engine = create_async_engine(
            settings.database_url,
            hide_parameters=True,
            pool_timeout=settings.database_pool_timeout_seconds,
        )
        _configure_sqlite(engine)
        return engine

    async def connect() -> asyncpg.Connection:
        return await open_connection(settings, owner=owner)

    # No pre-ping: on asyncpg it costs three round trips per checkout (BEGIN, an empty
    # query, ROLLBACK). A connection the server has dropped fails its first statement
    # instead; SQLAlchemy then invalidates the pool's older connections, and the request
    # fails closed (503, nothing disclosed; the lookup maps read errors to 503 too).
    # Connections are recycled hourly so none outlives idle timeouts on the way.
    engine = create_async_engine(
        settings.database_url,
        async_creator=connect,
        hide_parameters=True,
        pool_size=settings.database_pool_size,
        max_overflow=0,
        pool_timeout=settings.database_pool_timeout_seconds,
        pool_recycle=POOL_RECYCLE_SECONDS,
    )
    _refuse_busy_connections(engine)
    return engine


# Whether the acting role could change the log (superuser, owner, or UPDATE / DELETE /
# TRUNCATE granted): the service must act as a role that can only add to it.
_LOG_CHANGEABLE = text(
    "SELECT current_user AS acting, r.rolsuper"
    " OR pg_has_role(current_user, c.relowner, 'MEMBER')"
    " OR has_table_privilege(c.oid, 'UPDATE, DELETE, TRUNCATE') AS can_change_log"
    " FROM pg_roles r, pg_class c"
    " WHERE r.rolname = current_user AND c.oid = to_regclass('audit_events')"
)


async def check_acting_role(engine: AsyncEngine, settings: Settings) -> str | None:
    """At start: the role the connections act as, if it is one that can change the log
    (None if it cannot, or on SQLite, or before the first migration).

    Opening the connection already checked it acts as the configured role (WrongRole
    otherwise). Raises what the database raises when it cannot be reached.
    """
    if settings.is_sqlite:
        return None
    async with engine.connect() as connection:
        row = (await connection.execute(_LOG_CHANGEABLE)).first()
    if row is not None and row.can_change_log:
        return str(row.acting)
    return None


def _milliseconds(seconds: float) -> str:
    return str(max(1, round(seconds * 1000)))


async def open_connection(settings: Settings, *, owner: bool = False) -> asyncpg.Connection:
    """Open a PostgreSQL connection acting as the configured role, with every wait bounded.

    The role is a startup parameter, not a ``SET ROLE`` statement: it becomes the
    session's default, which no ROLLBACK, ``RESET ROLE`` or ``DISCARD ALL`` undoes,
    and no statement runs (so no transaction opens) before the connection is handed
    over. Then the connection is checked: it must act as the role and be idle.
    """
    server_settings = {"application_name": "cp-register"}
    role = None if owner else settings.database_role
    if role is not None:
        server_settings["role"] = role
    if not owner:
        server_settings |= {
            "statement_timeout": _milliseconds(settings.database_statement_timeout_seconds),
            "lock_timeout": _milliseconds(settings.database_lock_timeout_seconds),
            "idle_in_transaction_session_timeout": _milliseconds(
                settings.database_idle_in_transaction_timeout_seconds
            ),
        }
    url = make_url(settings.database_url)
    connection = await asyncpg.connect(
        url.set(drivername="postgresql").render_as_string(hide_password=False),
        timeout=settings.database_connect_timeout_seconds,
        command_timeout=None
        if owner
        else settings.database_statement_timeout_seconds + DRIVER_TIMEOUT_MARGIN_SECONDS,
        server_settings=server_settings,
    )
    try:
        acting = await connection.fetchval(
            "SELECT current_user", timeout=settings.database_connect_timeout_seconds
        )
        expected = role or url.username
        if expected is not None and acting != expected:
            raise WrongRole(f"the connection acts as {acting!r}, not {expected!r}")
        if connection.is_in_transaction():
            raise WrongRole("a new connection is inside a transaction")
    except BaseException:
        connection.terminate()
        raise
    return connection


def _refuse_busy_connections(engine: AsyncEngine) -> None:
    """A pooled connection is handed out only idle: outside any transaction, open.

    A client-side check (the driver tracks the server's transaction status from
    every reply), so it costs nothing; a connection that fails it is discarded and
    the pool hands out another, so nothing runs on a connection in a state no one
    established.
    """

    @event.listens_for(engine.sync_engine, "checkout")
    def _on_checkout(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        driver = dbapi_connection.driver_connection
        if driver.is_closed() or driver.is_in_transaction():
            raise DisconnectionError("pooled connection not idle")


def _configure_sqlite(engine: AsyncEngine) -> None:
    """WAL, durable commits, foreign keys, and BEGIN IMMEDIATE.

    A deferred transaction that reads and then writes can fail with SQLITE_BUSY
    when another writer commits in between; taking the write lock at BEGIN
    makes concurrent lookups queue instead of fail.
    """

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        read_only = conn.get_execution_options().get(READ_ONLY_OPTION, False)
        conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


# --- the lookup's hot path ------------------------------------------------------------------
#
# A lookup runs three statements (principal with its volume counts, candidates, the
# audit INSERT). Through SQLAlchemy's AsyncConnection each costs about 0.2 ms of Python
# above what the driver needs, and a checked-out Connection another 0.2 ms; on a
# two-core machine that was a quarter of a lookup's CPU. So the hot path takes a
# connection straight from the engine's pool (same pool, same connection set-up, same
# checks at checkout, same recycling) and, on PostgreSQL, runs the statements through
# asyncpg itself: the SQL is compiled once from the same Core statements, and values
# pass through the same type processors SQLAlchemy would use. Each statement commits
# itself (asyncpg outside a transaction is autocommit; a single INSERT is atomic,
# trigger and all), so the audit event is durable when the INSERT returns. That is
# not assumed but proved on every lookup, from what the driver already knows: the
# connection is outside any transaction when it is taken, the INSERT reports one row,
# and the connection is still outside a transaction after it. On SQLite, SQLAlchemy
# Core: the reads in a deferred transaction, the INSERT in a BEGIN IMMEDIATE one,
# committed explicitly. Either way
# the reads and the write are not one transaction; at READ COMMITTED (PostgreSQL's
# default) they never saw one snapshot anyway, and two concurrent lookups could
# always both count below a limit before either wrote.


class DatabaseUnavailable(Exception):
    """A hot-path statement failed: the database refused it or could not be reached."""


# What a database that is down, unreachable, hung, restarting or refusing raises, from
# the driver, the pool or SQLAlchemy: each is answered 503 (app/errors.py), never 500.
DATABASE_ERRORS: tuple[type[Exception], ...] = (
    SQLAlchemyError,
    EmulatedDBAPIException,  # the driver's errors as SQLAlchemy's adapter raises them
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    OSError,
    TimeoutError,
    WrongRole,
    DatabaseUnavailable,
)


@dataclass(frozen=True)
class _Compiled:
    sql: str
    # (name, default value, bind processor) in the order of the $n placeholders
    binds: tuple[tuple[str, Any, Callable[[Any], Any] | None], ...]
    # (key, result processor) of each selected column, in order
    columns: tuple[tuple[str, Callable[[Any], Any] | None], ...]

    @classmethod
    def of(cls, statement: ExecutableReturnsRows, dialect: Dialect) -> "_Compiled":
        compiled = statement.compile(dialect=dialect)
        binds = []
        for name in compiled.positiontup or ():
            parameter = compiled.binds[name]
            processor = parameter.type.dialect_impl(dialect).bind_processor(dialect)
            binds.append((name, parameter.value, processor))
        columns = []
        if isinstance(statement, Select):
            for key, column in statement.selected_columns.items():
                processor = column.type.dialect_impl(dialect).result_processor(dialect, None)
                columns.append((key, processor))
        return cls(compiled.string, tuple(binds), tuple(columns))

    def arguments(self, parameters: Mapping[str, Any]) -> list[Any]:
        values = []
        for name, default, processor in self.binds:
            value = parameters.get(name, default)
            values.append(processor(value) if processor is not None else value)
        return values

    def mapping(self, record: Sequence[Any]) -> dict[str, Any]:
        return {
            key: processor(value) if processor is not None else value
            for (key, processor), value in zip(self.columns, record, strict=True)
        }


class HotStatement:
    """A Core statement for the hot path, compiled for asyncpg on first use."""

    def __init__(self, statement: ExecutableReturnsRows) -> None:
        self.statement = statement
        self._compiled: _Compiled | None = None

    def compiled(self, dialect: Dialect) -> _Compiled:
        if self._compiled is None:
            self._compiled = _Compiled.of(self.statement, dialect)
        return self._compiled


def lock_key(name: str) -> int:
    """A stable signed 64-bit advisory lock key for ``name`` (every process agrees)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


class HotConnection:
    """The lookup's connection: fetch rows, insert one row, commit; any failure of the
    database is DatabaseUnavailable (the caller fails closed)."""

    dialect_name: str

    async def fetch(
        self, statement: HotStatement, parameters: Mapping[str, Any]
    ) -> Sequence[Mapping[str, Any]]:
        raise NotImplementedError

    async def serialise(self, keys: Sequence[str], wait_seconds: float) -> None:
        """Begin the transaction in which the rest runs, holding a lock on each key
        until it commits: requests on the same key then count and write one at a time.
        Waits at most ``wait_seconds`` for the locks (then DatabaseUnavailable)."""
        raise NotImplementedError

    async def insert_one(self, statement: HotStatement, parameters: Mapping[str, Any]) -> None:
        """Run an INSERT that must write exactly one row."""
        raise NotImplementedError

    async def commit(self) -> None:
        """Make what was written durable, or raise DatabaseUnavailable."""
        raise NotImplementedError


class _AsyncpgConnection(HotConnection):
    dialect_name = "postgresql"

    def __init__(self, pooled: PoolProxiedConnection, dialect: Dialect) -> None:
        self._driver: Any = pooled.driver_connection
        self._dialect = dialect
        self.broken = False  # never to be handed out again
        self.lost = False  # the database ended it, and most likely its siblings too
        self.serialised = False  # inside the transaction serialise() began

    def check_idle(self) -> None:
        """Autocommit is what makes each statement durable as it returns: on a
        connection inside a transaction the event would wait for a COMMIT that nobody
        sends, and be rolled back when the connection goes back. Refuse such a one."""
        if self._driver.is_closed() or self._driver.is_in_transaction():
            self.broken = True
            raise DatabaseUnavailable("connection_not_idle")

    def terminate(self) -> None:
        self._driver.terminate()

    async def serialise(self, keys: Sequence[str], wait_seconds: float) -> None:
        # One round trip: BEGIN and the locks, as integer literals (no value from the
        # caller is spliced into SQL), always in the same order, so no two requests
        # wait for each other crosswise. The lock wait is bounded for this transaction.
        locks = "; ".join(f"SELECT pg_advisory_xact_lock({lock_key(key)})" for key in sorted(keys))
        wait = f"SET LOCAL lock_timeout = {max(1, round(wait_seconds * 1000))}"
        try:
            await self._driver.execute(f"BEGIN; {wait}; {locks}")
        except asyncio.CancelledError:
            self.broken = True
            raise
        except Exception as exc:
            self.lost = self._driver.is_closed() or not isinstance(exc, asyncpg.PostgresError)
            self.broken = True
            raise DatabaseUnavailable(type(exc).__name__) from exc
        self.serialised = True

    async def _run(
        self, method: str, statement: HotStatement, parameters: Mapping[str, Any]
    ) -> Any:
        compiled = statement.compiled(self._dialect)
        try:
            return await getattr(self._driver, method)(
                compiled.sql, *compiled.arguments(parameters)
            )
        except asyncio.CancelledError:
            # A statement cut off mid-flight leaves the connection busy.
            self.broken = True
            raise
        except Exception as exc:
            # A statement the server refused leaves the connection usable; a connection
            # that failed, timed out, or that the server ended (a restart, a failover),
            # is not.
            self.lost = self._driver.is_closed() or not isinstance(exc, asyncpg.PostgresError)
            self.broken = self.lost
            raise DatabaseUnavailable(type(exc).__name__) from exc

    async def fetch(
        self, statement: HotStatement, parameters: Mapping[str, Any]
    ) -> Sequence[Mapping[str, Any]]:
        records = await self._run("fetch", statement, parameters)
        compiled = statement.compiled(self._dialect)
        return [compiled.mapping(record) for record in records]

    async def insert_one(self, statement: HotStatement, parameters: Mapping[str, Any]) -> None:
        status = await self._run("execute", statement, parameters)
        if status != "INSERT 0 1":
            self.broken = True
            raise DatabaseUnavailable(f"insert_reported_{status!r}")

    async def commit(self) -> None:
        """Outside serialise(), each statement committed as it ran, which holds only
        outside a transaction; inside it, COMMIT. Either way checked, not assumed: the
        connection is outside a transaction afterwards."""
        if self.serialised:
            try:
                status = await self._driver.execute("COMMIT")
            except asyncio.CancelledError:
                self.broken = True
                raise
            except Exception as exc:
                self.broken = True
                raise DatabaseUnavailable(type(exc).__name__) from exc
            self.serialised = False
            if status != "COMMIT":
                self.broken = True
                raise DatabaseUnavailable(f"commit_reported_{status!r}")
        if self._driver.is_closed() or self._driver.is_in_transaction():
            self.broken = True
            raise DatabaseUnavailable("not_committed")


class _CoreConnection(HotConnection):
    """SQLite, through SQLAlchemy Core. Reads run in a deferred transaction (in WAL
    mode it neither waits for nor blocks a writer); the write gets a BEGIN IMMEDIATE
    transaction of its own, so the database's one write lock is held for the INSERT
    and COMMIT only, not across the whole request while other requests run."""

    def __init__(self, connection: AsyncConnection, writers: asyncio.Lock | None) -> None:
        self._connection = connection
        self.dialect_name = connection.dialect.name
        self._writing = False
        self._writers = writers
        self.holds_writers = False

    async def fetch(
        self, statement: HotStatement, parameters: Mapping[str, Any]
    ) -> Sequence[Mapping[str, Any]]:
        try:
            if not self._writing and not self._connection.in_transaction():
                await self._connection.execution_options(**{READ_ONLY_OPTION: True})
            result = await self._connection.execute(statement.statement, dict(parameters))
            # Read by column name: a RowMapping's keys may also be the Column objects.
            return cast(Sequence[Mapping[str, Any]], result.mappings().all())
        except SQLAlchemyError as exc:
            raise DatabaseUnavailable(type(exc).__name__) from exc

    async def serialise(self, keys: Sequence[str], wait_seconds: float) -> None:
        """SQLite has one write lock: take it now (BEGIN IMMEDIATE), for the counts,
        the reads and the write alike. The process's writers queue for it on ``writers``
        first, handed over at once, rather than in SQLite's busy handler, which sleeps
        up to 100 ms between tries; other processes still wait on the file's lock."""
        if self._writers is not None:
            await self._writers.acquire()
            self.holds_writers = True
        try:
            if self._connection.in_transaction():
                await self._connection.commit()  # the reads' deferred transaction
            await self._connection.execution_options(**{READ_ONLY_OPTION: False})
            await self._connection.begin()
        except SQLAlchemyError as exc:
            raise DatabaseUnavailable(type(exc).__name__) from exc
        self._writing = True

    async def insert_one(self, statement: HotStatement, parameters: Mapping[str, Any]) -> None:
        try:
            if not self._writing:
                if self._connection.in_transaction():
                    await self._connection.commit()  # the reads' transaction
                await self._connection.execution_options(**{READ_ONLY_OPTION: False})
                self._writing = True
            result = await self._connection.execute(statement.statement, dict(parameters))
        except SQLAlchemyError as exc:
            raise DatabaseUnavailable(type(exc).__name__) from exc
        if result.rowcount != 1:
            raise DatabaseUnavailable(f"insert_wrote_{result.rowcount}_rows")

    async def commit(self) -> None:
        try:
            await self._connection.commit()
        except SQLAlchemyError as exc:
            raise DatabaseUnavailable(type(exc).__name__) from exc
        finally:
            self.release()

    def release(self) -> None:
        if self.holds_writers and self._writers is not None:
            self.holds_writers = False
            self._writers.release()


@asynccontextmanager
async def hot_connection(
    sessionmaker: async_sessionmaker[AsyncSession], writers: asyncio.Lock | None = None
) -> AsyncIterator[HotConnection]:
    """A connection from the sessionmaker's engine's pool for the lookup's hot path.
    Anything not committed when it goes back is rolled back. ``writers``: on SQLite,
    the process's queue for the write lock (see _CoreConnection.serialise)."""
    engine: AsyncEngine = sessionmaker.kw["bind"]
    if engine.dialect.name != "postgresql":
        core: _CoreConnection | None = None
        try:
            async with engine.connect() as connection:
                core = _CoreConnection(connection, writers)
                yield core
        except DatabaseUnavailable:
            raise
        except DATABASE_ERRORS as exc:
            raise DatabaseUnavailable(type(exc).__name__) from exc
        finally:
            if core is not None:
                core.release()  # after the connection's rollback, if it did not commit
        return
    try:
        pooled = await engine.raw_connection()
    except DATABASE_ERRORS as exc:
        raise DatabaseUnavailable(type(exc).__name__) from exc
    hot = _AsyncpgConnection(pooled, engine.dialect)
    try:
        hot.check_idle()
        yield hot
    finally:
        if hot.serialised:
            hot.broken = True  # left inside its transaction: rolled back by ending it
        if hot.broken or hot.lost:
            # Cut at once, not closed politely: a server that stopped answering would
            # hold the goodbye, and the caller's 503, for seconds.
            hot.terminate()
        # In a greenlet: returning (or discarding) a connection may have to await it.
        if hot.lost:
            # As SQLAlchemy does on a disconnect: every connection the pool holds that is
            # older than this one is replaced at its next checkout, so that one lookup
            # fails closed after a restart, not one per pooled connection.
            await greenlet_spawn(engine.pool._invalidate, pooled)
        else:
            await greenlet_spawn(pooled.invalidate if hot.broken else pooled.close)
